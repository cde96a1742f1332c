"""The baseline: bare FastAPI endpoints on the same server stack as Hangar's API.

Same uvicorn, same TLS configuration and certificate, one worker; no auth,
no database, no audit. Run as ``python benchmarks/_bare_app.py DATA_DIR PORT``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from hangar.server.serve import _TLSConfig
from hangar.tlsprofile import TLS12_CIPHERS

app = FastAPI(docs_url=None, redoc_url=None)


class Item(BaseModel):
    name: str


@app.get("/bare")
def bare_list() -> dict[str, Any]:
    return {"items": [{"id": "app_0", "name": "bench", "org": "acme"}], "next_cursor": None}


@app.post("/bare", status_code=201)
def bare_create(item: Item) -> dict[str, str]:
    return {"id": "app_0", "name": item.name, "org": "acme"}


if __name__ == "__main__":
    import uvicorn

    data_dir, port = Path(sys.argv[1]), int(sys.argv[2])
    config = _TLSConfig(
        app,
        host="127.0.0.1",
        port=port,
        ssl_certfile=str(data_dir / "api.crt"),
        ssl_keyfile=str(data_dir / "api.key"),
        ssl_ciphers=TLS12_CIPHERS,
        log_level="warning",
        access_log=False,
        server_header=False,
    )
    uvicorn.Server(config).run()
