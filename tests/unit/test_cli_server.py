"""``hangar server``'s flags reach the settings the server runs with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hangar.cli.main import run
from hangar.server import serve


def test_server_run_joins_the_mesh_at_the_given_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(serve, "serve", seen.append)
    args = ["server", "run", "--data-dir", str(tmp_path), "--mesh-endpoint", "192.0.2.7:51821"]
    assert run([*args, "--mesh-port", "51821"]) == 0
    (settings,) = seen
    assert settings.mesh_endpoint == "192.0.2.7:51821"
    assert settings.mesh_port == 51821
