"""What the benchmarks share: free ports and a fresh installation."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

HANGAR = [sys.executable, "-m", "hangar.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_installation(work: Path, env: dict[str, str]) -> str:
    """`hangar server init` in work/data; returns the admin token (kept in work/token)."""
    subprocess.run(
        [
            *HANGAR,
            "server",
            "init",
            "--data-dir",
            str(work / "data"),
            "--org",
            "acme",
            "--admin-email",
            "bench@example.com",
            "--token-file",
            str(work / "token"),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    return (work / "token").read_text().strip()


def start_server(
    work: Path, env: dict[str, str], port: int, *extra: str
) -> subprocess.Popen[bytes]:
    """`hangar server run` for work/data with its agent in work/agent; logs to work/server.log."""
    with (work / "server.log").open("ab") as log:
        return subprocess.Popen(
            [
                *HANGAR,
                "server",
                "run",
                "--data-dir",
                str(work / "data"),
                "--listen-port",
                str(port),
                "--agent-listen-port",
                "0",
                "--agent-dir",
                str(work / "agent"),
                "--log-level",
                "warning",
                *extra,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
