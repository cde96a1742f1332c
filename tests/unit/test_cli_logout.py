"""`hangar auth logout` forgets a session only once the server has ended it."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from hangar.cli.main import run


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_logout_keeps_the_session_when_the_server_cannot_end_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HANGAR_CONFIG_DIR", str(tmp_path))
    monkeypatch.delenv("HANGAR_API_URL", raising=False)
    monkeypatch.delenv("HANGAR_TOKEN", raising=False)
    saved = tmp_path / "config.json"
    saved.write_text(
        json.dumps({"api_url": f"http://127.0.0.1:{_closed_port()}", "token": "hm1_x"})
    )
    saved.chmod(0o600)
    assert run(["auth", "logout"]) != 0
    err = capsys.readouterr().err
    assert "did not end the session" in err and "hangar auth logout" in err
    assert saved.exists()


def test_logout_when_not_logged_in_says_so_in_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HANGAR_CONFIG_DIR", str(tmp_path))
    assert run(["auth", "logout", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ended": None, "removed": None}
