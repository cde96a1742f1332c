"""Machines as hardened runc containers.

``RuncRuntime`` keeps, per machine, a bundle on a 0700 tmpfs (bundles will
carry secrets, so never on disk), runc's state, and a versioned handle plus
logs under its state directory, from which a restarted agent adopts what runs.
The bundle's config is ``ociconfig.oci_config``, which holds the hardening;
each machine's output and exit status are kept by its shim (``shim.py``),
which outlives the agent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import resource
import shutil
import signal as signals
import stat
import sys
import time
from pathlib import Path, PurePosixPath
from typing import Any

from hangar import hostcmd
from hangar.agent.runtimes.base import ExecResult, MachineSpec, RuntimeState
from hangar.agent.runtimes.ociconfig import etc_files, oci_config
from hangar.agent.runtimes.registry import register
from hangar.errors import (
    CommandError,
    ConfigError,
    Conflict,
    IntegrityError,
    NotFound,
    ValidationError,
    WaitTimeout,
)
from hangar.hostfs import ensure_private_tmpfs, write_private
from hangar.images.store import resolve_inside
from hangar.net import netns
from hangar.telemetry.logfiles import read_all

__all__ = ["HANDLE_VERSION", "RuncRuntime"]

HANDLE_VERSION = 1
# Debian's tini-static (package ``tini``): static, so it runs in any image.
DEFAULT_INIT = Path("/usr/bin/tini-static")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


@register("runc")
class RuncRuntime:
    """Runs machines with runc. ``state_dir`` persists; ``bundles_dir`` is tmpfs."""

    name = "runc"

    def __init__(
        self,
        state_dir: Path,
        bundles_dir: Path,
        *,
        uid_base: int = 100000,
        id_range: int = 65536,
        mount_tmpfs: bool = True,
        init: Path = DEFAULT_INIT,
    ) -> None:
        self.state_dir = state_dir
        self.init = init
        self.bundles_dir = bundles_dir
        self.uid_base = uid_base
        self.root_uid = uid_base
        self.id_range = id_range
        self.runc_root = state_dir / "runc"
        for directory in (state_dir, self.runc_root, state_dir / "machines"):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(directory, 0o700)
        if mount_tmpfs:
            ensure_private_tmpfs(bundles_dir)
        else:
            bundles_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Machines' init (uid_base) must traverse to its own files directory.
        os.chmod(bundles_dir, 0o711)  # noqa: S103 - search-only

    # paths

    def _machine_dir(self, machine_id: str) -> Path:
        if not machine_id or "/" in machine_id or machine_id.startswith("."):
            raise ValidationError(f"bad machine id {machine_id!r}")
        return self.state_dir / "machines" / machine_id

    def _bundle(self, machine_id: str) -> Path:
        return self.bundles_dir / machine_id

    def _runc(self, *args: str, timeout: float = 30.0) -> hostcmd.Completed:
        return hostcmd.run(["runc", "--root", str(self.runc_root), *args], timeout=timeout)

    def _cgroup_dirs(self, machine_id: str) -> list[Path]:
        base = Path("/sys/fs/cgroup")
        return [p for p in base.glob(f"*/hangar/{machine_id}")] + [
            p for p in [base / "hangar" / machine_id] if p.exists()
        ]

    # lifecycle

    def start(self, spec: MachineSpec) -> RuntimeState:
        machine = self._machine_dir(spec.id)
        if machine.exists():
            raise Conflict(f"machine {spec.id} already exists on this host")
        config = self._config(spec)
        try:
            machine.mkdir(mode=0o700)
            (machine / "handle.json").write_text(
                json.dumps(
                    {
                        "version": HANDLE_VERSION,
                        "runtime": self.name,
                        "id": spec.id,
                        "bundle": str(self._bundle(spec.id)),
                        "created_at": _now(),
                    }
                )
            )
            return self._launch(spec, config)
        except BaseException:
            self._cleanup(spec.id)
            raise

    def restart(self, spec: MachineSpec) -> RuntimeState:
        """Start a stopped machine again in place, keeping its handle and logs."""
        machine = self._machine_dir(spec.id)
        state = self.state(spec.id)
        if state.status == "absent":
            raise NotFound(f"machine {spec.id} not found on this host")
        if state.status == "running":
            raise Conflict(f"machine {spec.id} is running; stop it first")
        config = self._config(spec)
        with contextlib.suppress(CommandError):
            self._runc("delete", "--force", spec.id)
        shutil.rmtree(self._bundle(spec.id), ignore_errors=True)
        for name in ("exit.json", "container.pid", "shim.pid"):
            (machine / name).unlink(missing_ok=True)
        netns.detach(spec.id)
        return self._launch(spec, config)

    @staticmethod
    def _check_command(spec: MachineSpec, env: dict[str, str]) -> None:
        """CommandError unless the command is an executable file in the image.

        The init would say so too, but only once the machine runs; this says it
        before anything is made. Paths resolve inside the image, never outside.
        """
        if not spec.args:
            return  # oci_config refuses it, with its own words
        command = spec.args[0]
        if "/" in command:
            candidates = [command]
        else:
            path = env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            candidates = [f"{d}/{command}" for d in path.split(":") if d.startswith("/")]
        for candidate in candidates:
            try:
                parts = [p for p in PurePosixPath(candidate).parts if p != "/"]
                found = resolve_inside(spec.rootfs, parts, follow_last=True).lstat()
            except (OSError, IntegrityError):
                continue
            if stat.S_ISREG(found.st_mode) and found.st_mode & 0o111:
                return
        raise CommandError(
            ["runc", "run", spec.id],
            127,
            f"exec {command} failed: no executable file by that name in the image",
        )

    def _config(self, spec: MachineSpec) -> dict[str, Any]:
        # A machine cannot be given more open files than the agent may have.
        nofile = min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        self._check_command(spec, spec.env)
        if not self.init.is_file():
            raise ConfigError(
                f"the machines' init {self.init} is missing",
                hint="install Debian's tini package (scripts/apt-deps.sh)",
            )
        return oci_config(
            spec,
            uid_base=self.uid_base,
            id_range=self.id_range,
            files_dir=self._bundle(spec.id) / "files",
            init=self.init,
            nofile=nofile,
        )

    def _launch(self, spec: MachineSpec, config: dict[str, Any]) -> RuntimeState:
        """Write the bundle and start the shim; the machine dir must exist."""
        machine = self._machine_dir(spec.id)
        bundle = self._bundle(spec.id)
        files = bundle / "files"
        bundle.mkdir(mode=0o700)
        files.mkdir(mode=0o700)
        for name, content in etc_files(spec).items():
            (files / name).write_text(content)
            os.chmod(files / name, 0o444)
        for n, guest_path in enumerate(sorted(spec.files)):
            secret = files / f"secret-{n}"
            write_private(secret, spec.files[guest_path], mode=0o400, exclusive=True)
            # Readable by the machine's own user only.
            os.chown(secret, self.uid_base + spec.uid, self.uid_base + spec.gid)
        # The machine's own root (host uid_base) reads these; nobody else.
        os.chown(files, self.uid_base, self.uid_base)
        os.chmod(bundle, 0o711)  # noqa: S103 - search-only, to reach files/
        write_private(bundle / "config.json", json.dumps(config), exclusive=True)
        with (machine / "shim.err").open("ab") as shim_err:
            # Returns once the detached shim has written its pid file.
            hostcmd.run(
                [
                    sys.executable,
                    "-m",
                    "hangar.agent.runtimes.shim",
                    str(self.runc_root),
                    str(bundle),
                    spec.id,
                    str(machine),
                ],
                stdout=hostcmd.DEVNULL,
                stderr=shim_err,
                timeout=30,
            )
        return self._wait_started(spec.id)

    def _wait_started(self, machine_id: str) -> RuntimeState:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = self.state(machine_id)
            if state.status == "running" and state.pid is not None:
                return state  # runc reports the machine's process
            if state.status == "stopped":
                deadline = time.monotonic() + 5  # let the shim record the exit
                machine = self._machine_dir(machine_id)
                while self._shim_alive(machine) and time.monotonic() < deadline:
                    time.sleep(0.01)
                exit_state = self.state(machine_id)
                if exit_state.status == "running" or exit_state.started:
                    return exit_state  # it ran (and may already have finished)
                raise CommandError(
                    ["runc", "run", machine_id],
                    exit_state.exit_code if exit_state.exit_code is not None else -1,
                    self._failure_output(machine_id),
                )
            time.sleep(0.01)
        raise CommandError(["runc", "run", machine_id], -1, "the machine did not start in 30s")

    def _failure_output(self, machine_id: str) -> str:
        machine = self._machine_dir(machine_id)
        lines = []
        log = machine / "output.log"
        if log.exists():
            for raw in log.read_text().splitlines()[-10:]:
                try:
                    lines.append(json.loads(raw)["line"])
                except (ValueError, KeyError):
                    continue
        err = machine / "shim.err"
        if err.exists():
            lines += err.read_text().splitlines()[-5:]
        return "\n".join(lines) or "(no output)"

    def state(self, machine_id: str) -> RuntimeState:
        """From the shim's files alone (no runc call), so it is cheap for many machines.

        exit.json: stopped. Shim alive: running, with the pid runc wrote once
        the process exists. Shim gone without exit.json (the host rebooted, or
        it was killed): stopped, exit unknown.
        """
        machine = self._machine_dir(machine_id)
        if not (machine / "handle.json").exists():
            return RuntimeState("absent")
        exit_file = machine / "exit.json"
        if exit_file.exists():
            result = json.loads(exit_file.read_text())
            return RuntimeState(
                "stopped",
                exit_code=result["exit_code"],
                finished_at=result["finished_at"],
                started=bool(result.get("started", True)),
            )
        if self._shim_alive(machine):
            try:
                pid = int((machine / "container.pid").read_text())
            except (OSError, ValueError):
                pid = None  # runc has not made the process yet
            return RuntimeState("running", pid=pid)
        if exit_file.exists():  # it finished while we looked
            return self.state(machine_id)
        return RuntimeState("stopped", exit_code=None)

    @staticmethod
    def _shim_alive(machine: Path) -> bool:
        try:
            pid = int((machine / "shim.pid").read_text())
        except (OSError, ValueError):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # An exited shim stays a zombie until init reaps it, which some inits
        # do only every second or so: it has finished all the same.
        try:
            stat_line = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat_line.rpartition(")")[2].split()[:1] != ["Z"]

    def signal(self, machine_id: str, signal: str) -> None:
        if not hasattr(signals, signal) or not signal.startswith("SIG"):
            raise ValidationError(f"unknown signal {signal!r}")
        if self.state(machine_id).status != "running":
            raise Conflict(f"machine {machine_id} is not running")
        try:
            self._runc("kill", machine_id, signal.removeprefix("SIG"))
        except CommandError:
            if self.state(machine_id).status == "running":
                raise

    def stop(
        self, machine_id: str, *, signal: str = "SIGTERM", timeout: float = 10.0
    ) -> RuntimeState:
        state = self.state(machine_id)
        if state.status != "running":
            return state
        self.signal(machine_id, signal)
        if not self._wait_stopped(machine_id, timeout):
            self.signal(machine_id, "SIGKILL")
            self._wait_stopped(machine_id, 30)
        return self.state(machine_id)

    def _wait_stopped(self, machine_id: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state(machine_id).status != "running":
                return True
            time.sleep(0.02)
        return False

    def exec(self, machine_id: str, argv: list[str], *, timeout: float = 60.0) -> ExecResult:
        if not argv:
            raise ValidationError("nothing to run: give a command")
        if self.state(machine_id).status != "running":
            raise Conflict(f"machine {machine_id} is not running", hint="start it first")
        try:
            result = hostcmd.run(
                ["runc", "--root", str(self.runc_root), "exec", machine_id, *argv],
                timeout=timeout,
                check=False,
            )
        except CommandError as exc:
            # The error names the program, never its arguments: they may hold
            # a password, and errors end up in the server's log. Not chained,
            # so no traceback shows them either.
            what = f"{argv[0]} ({len(argv) - 1} argument(s)) in machine {machine_id}"
            if exc.returncode == -1:
                raise WaitTimeout(f"{what} did not finish within {timeout:g}s") from None
            raise Conflict(f"could not run {what}: {exc.stderr}") from None
        return ExecResult(result.returncode, result.stdout, result.stderr)

    def logs(self, machine_id: str) -> list[dict[str, str]]:
        """Every captured output line still on disk, oldest first."""
        machine = self._machine_dir(machine_id)
        if not machine.exists():
            raise NotFound(f"machine {machine_id} not found on this host")
        return read_all(machine / "output.log")

    def log_path(self, machine_id: str) -> Path:
        """The machine's current output log (rotated ones lie beside it)."""
        return self._machine_dir(machine_id) / "output.log"

    def remove(self, machine_id: str) -> None:
        if self.state(machine_id).status == "running":
            self.stop(machine_id, signal="SIGKILL", timeout=10)
        self._cleanup(machine_id)

    def _cleanup(self, machine_id: str) -> None:
        """Remove every trace; safe to call on a half-made machine."""
        machine = self._machine_dir(machine_id)
        with contextlib.suppress(CommandError):  # not known to runc: what we want
            self._runc("delete", "--force", machine_id)
        deadline = time.monotonic() + 10
        while self._shim_alive(machine) and time.monotonic() < deadline:
            time.sleep(0.02)
        shutil.rmtree(self._bundle(machine_id), ignore_errors=True)
        shutil.rmtree(machine, ignore_errors=True)
        netns.detach(machine_id)
        for cgroup in self._cgroup_dirs(machine_id):
            with contextlib.suppress(OSError):
                cgroup.rmdir()

    def list(self) -> list[str]:
        machines = self.state_dir / "machines"
        return sorted(p.name for p in machines.iterdir() if (p / "handle.json").exists())
