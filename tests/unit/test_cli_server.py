"""``hangar server``'s flags reach the settings the server runs with."""

from __future__ import annotations

import socket
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


def test_server_stop_refuses_without_yes_when_no_one_is_at_the_keyboard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 0)  # the refusal comes before any host change
    monkeypatch.setenv("HANGAR_LISTEN_PORT", str(_free_port()))
    assert run(["server", "stop", "--data-dir", str(tmp_path / "data")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: Stop every machine") and "Refusing without --yes" in error


def test_server_stop_refuses_while_the_server_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        monkeypatch.setenv("HANGAR_LISTEN_PORT", str(listener.getsockname()[1]))
        code = run(["server", "stop", "--data-dir", str(tmp_path / "data"), "--yes"])
    assert code == 1
    error, hint = capsys.readouterr().err.splitlines()
    assert "the server is running" in error
    assert hint == "hint: stop it first: Ctrl-C, or `systemctl stop hangar-server`"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
