"""API throughput: authenticated, audited Hangar routes against bare FastAPI.

Starts a real ``hangar server run`` (SQLite, one worker, TLS) and, in the same
run, a bare FastAPI app on the same uvicorn/TLS stack; drives each with wrk
over HTTPS keep-alive and prints requests/s and the ratio.

    GET  /v1/apps   authenticated list (token verified, membership loaded)
    POST /v1/apps   authenticated create, audited in the same transaction

Usage: python benchmarks/api_throughput.py [--seconds 10] [--connections 8] [--quick]
Targets on a 2-core machine: reads >= 1,500/s, creates >= 300/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from _support import HANGAR, free_port, init_installation, wrk

HERE = Path(__file__).resolve().parent

LIST_LUA = """
wrk.headers["Authorization"] = "Bearer {token}"
"""

CREATE_LUA = """
local counter = 0
local prefix = ""
function setup(thread)
  thread:set("id", tostring(math.random(100000, 999999)))
end
function init(args)
  prefix = "b" .. (id or "0") .. "-"
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, '{{"name": "' .. prefix .. counter .. '"}}')
end
"""


def wait_up(url: str, ca: Path, proc: subprocess.Popen[bytes]) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    for _ in range(150):
        if proc.poll() is not None:
            raise SystemExit(f"server exited early ({proc.returncode})")
        try:
            httpx.get(url, verify=context, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def lua(workdir: Path, name: str, text: str) -> Path:
    path = workdir / f"{name}.lua"
    path.write_text(text)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: does it run at all")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.connections = 1, 2
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: run `make deps` (Debian package wrk)")

    work = Path(tempfile.mkdtemp(prefix="hangar-bench-"))
    data = work / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    hangar = HANGAR
    token = init_installation(work, env)
    hangar_port, bare_port = free_port(), free_port()
    log = (work / "servers.log").open("ab")
    procs = [
        subprocess.Popen(
            [
                *hangar,
                "server",
                "run",
                "--data-dir",
                str(data),
                "--listen-port",
                str(hangar_port),
                "--agent-listen-port",
                "0",
                "--metrics-port",
                "0",
                "--log-level",
                "warning",
                "--no-agent",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [sys.executable, str(HERE / "_bare_app.py"), str(data), str(bare_port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        ),
    ]
    log.close()
    try:
        wait_up(f"https://127.0.0.1:{hangar_port}/v1/healthz", data / "ca.crt", procs[0])
        wait_up(f"https://127.0.0.1:{bare_port}/bare", data / "ca.crt", procs[1])
        httpx.post(
            f"https://127.0.0.1:{hangar_port}/v1/apps",
            json={"name": "bench"},
            headers={"Authorization": f"Bearer {token}"},
            verify=ssl.create_default_context(cafile=str(data / "ca.crt")),
        )
        lua_list = lua(work, "list", LIST_LUA.format(token=token))
        lua_create = lua(work, "create", CREATE_LUA.format(token=token))
        bare, ours = f"https://127.0.0.1:{bare_port}", f"https://127.0.0.1:{hangar_port}"
        size = (args.seconds, args.connections)
        run = {
            "bare_get": wrk(f"{bare}/bare", *size, script=lua_list),
            "hangar_get": wrk(f"{ours}/v1/apps", *size, script=lua_list),
            "bare_post": wrk(f"{bare}/bare", *size, script=lua_create),
            "hangar_post": wrk(f"{ours}/v1/apps", *size, script=lua_create),
        }
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
    failed = [name for name, f in run.items() if f["non_2xx"] or f["errors"]]
    if failed:
        print(
            f"error: {', '.join(failed)} had non-2xx responses or socket errors, so the "
            f"figures mean nothing; server output: {work / 'servers.log'}",
            file=sys.stderr,
        )
        raise SystemExit(1)
    read_ratio = run["hangar_get"]["rps"] / run["bare_get"]["rps"]
    create_ratio = run["hangar_post"]["rps"] / run["bare_post"]["rps"]
    if args.json:
        print(json.dumps({**run, "read_ratio": read_ratio, "create_ratio": create_ratio}, indent=2))
    else:
        print(f"{'':22}{'bare FastAPI':>14}{'Hangar':>12}{'ratio':>8}{'target':>12}")
        print(
            f"{'GET  /v1/apps (auth)':22}{run['bare_get']['rps']:>12.0f}/s"
            f"{run['hangar_get']['rps']:>10.0f}/s{read_ratio:>8.2f}{'>= 1500/s':>12}"
        )
        print(
            f"{'POST /v1/apps (audit)':22}{run['bare_post']['rps']:>12.0f}/s"
            f"{run['hangar_post']['rps']:>10.0f}/s{create_ratio:>8.2f}{'>= 300/s':>12}"
        )
        print(
            f"p50 latency: GET {run['hangar_get']['p50_ms']:.2f} ms "
            f"(bare {run['bare_get']['p50_ms']:.2f}), POST {run['hangar_post']['p50_ms']:.2f} ms "
            f"(bare {run['bare_post']['p50_ms']:.2f}); {args.connections} connections, "
            f"{args.seconds}s each, one server worker, HTTPS keep-alive"
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
