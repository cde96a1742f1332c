"""The systemd units: valid for systemd, and shaped so a restart keeps machines and the edge."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ("hangar-server.service", "hangar-agent.service")
# Each of these gives the service a mount namespace of its own, which would hide the
# agent's tmpfs and the machines' mounts from the host and lose them on a restart.
MOUNT_NAMESPACE_OPTIONS = (
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "PrivateDevices",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectProc",
    "PrivateMounts",
    "TemporaryFileSystem",
    "BindPaths",
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units as `make install-units` writes them, into a directory of their own."""
    unit_dir = tmp_path_factory.mktemp("units")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    hangar = str(Path(sys.executable).parent / "hangar")
    env.update(UNIT_DIR=str(unit_dir), HANGAR=hangar, DATA_DIR="/srv/hangar")
    done = subprocess.run(
        [str(ROOT / "scripts" / "install-units.sh")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return unit_dir


def _settings(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if m := re.match(r"^([A-Za-z]+)=(.*)$", line):
            found[m.group(1)] = m.group(2)
    return found


@pytest.mark.parametrize("unit", UNITS)
def test_a_restart_keeps_machines_and_the_edge(installed: Path, unit: str) -> None:
    settings = _settings(installed / unit)
    assert settings["KillMode"] == "process"
    assert settings["Restart"] == "on-failure"
    assert settings["NoNewPrivileges"] == "yes"
    assert not set(settings) & set(MOUNT_NAMESPACE_OPTIONS)
    assert "@" not in settings["ExecStart"]


def test_the_paths_are_filled_in(installed: Path) -> None:
    server = _settings(installed / "hangar-server.service")["ExecStart"]
    assert server.endswith("server run --data-dir /srv/hangar --agent-dir /srv/hangar-agent")
    agent = _settings(installed / "hangar-agent.service")["ExecStart"]
    assert "agent run --agent-dir /var/lib/hangar-agent" in agent


def test_a_relative_path_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "UNIT_DIR": str(tmp_path), "DATA_DIR": "hangar"}
    done = subprocess.run(
        [str(ROOT / "scripts" / "install-units.sh")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2 and "not an absolute path" in done.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian: apt-get install systemd; `make deps`)",
)
def test_systemd_accepts_the_units(installed: Path) -> None:
    # verify exits 0 on settings it ignores, so its every complaint counts.
    done = subprocess.run(
        ["systemd-analyze", "verify", *(str(installed / u) for u in UNITS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
