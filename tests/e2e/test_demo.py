"""`make demo`'s script brings up a working installation and exits cleanly in one-shot mode."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_script_runs_end_to_end(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    env.update(DEMO_ONESHOT="1", DEMO_DIR=str(tmp_path / "demo"), DEMO_PORT=str(port))
    first = subprocess.run(
        [str(ROOT / "scripts" / "demo.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Created app hello in demo." in first.stdout
    assert f"Hangar is running at https://127.0.0.1:{port}" in first.stdout
    assert "\nok      chain org_" in first.stdout
    # A second run reuses the installation instead of failing on it.
    again = subprocess.run(
        [str(ROOT / "scripts" / "demo.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert "Created app" not in again.stdout and "hello" in again.stdout
