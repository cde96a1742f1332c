"""The edge: HAProxy, configured from the routing table and changed transactionally.

``render`` (in ``edge.render``) turns a ``RoutingTable`` into configuration
text; ``Edge.apply`` does the I/O:

1. render into a fresh directory ``conf.<digest>`` (config, maps, certificates
   and their crt-list) on the edge's 0700 tmpfs, where private keys live;
2. validate it with ``haproxy -c``; a rejected config never goes live;
3. point the ``current`` link at it (the old target stays as ``previous``) and
   ask the master process to reload, which is hitless: the new worker takes
   over the listening sockets and the old one finishes its requests;
4. if no new worker appears, point ``current`` back and reload again.

A change only in which servers are in rotation (health, deploys) skips all
of that and goes through the runtime API socket: ``set server … state``.

HAProxy runs in master-worker mode, detached from the agent, so restarting
the agent never drops a connection: a new agent adopts the running master
from its pid file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from hangar import hostcmd
from hangar.crypto.certs import self_signed_pem
from hangar.domain.routing import RoutingTable, http_backend
from hangar.edge.accesslog import SOCKET as ACCESS_SOCKET
from hangar.edge.accesslog import AccessLog
from hangar.edge.quarantine import only, ports_in_use, units, without
from hangar.edge.render import EdgeConfig, render
from hangar.errors import CommandError
from hangar.hostfs import ensure_private_tmpfs, write_private

# EdgeConfig is what Edge is built from, so it is offered here too.
__all__ = ["Edge", "EdgeConfig"]

log = logging.getLogger("hangar.edge")


class Edge:
    """One host's HAProxy: started once, then changed only by ``apply``."""

    def __init__(self, cfg: EdgeConfig, *, binary: str = "haproxy") -> None:
        self.cfg = cfg
        self.binary = binary
        self.dir = cfg.directory
        self._shape: str | None = None
        self._states: dict[tuple[str, str], bool] = {}
        self.last_error: str = ""
        self.last_applied: float | None = None
        self.reloads = 0
        # What is left out of the table, and why; tried again every retry_after s.
        self.quarantined: dict[str, str] = {}
        self.retry_after = 30.0
        self._quarantined_at = 0.0
        self._asked: str | None = None
        self._own_ports: frozenset[int] = frozenset()
        # Requests' lines, per app, beside the edge's (tmpfs) directory.
        self.access = AccessLog(self.dir / ACCESS_SOCKET, self.dir.parent)

    # paths

    @property
    def current(self) -> Path:
        return self.dir / "current"

    @property
    def pidfile(self) -> Path:
        return self.dir / "haproxy.pid"

    @property
    def master_socket(self) -> Path:
        return self.dir / "master.sock"

    @property
    def admin_socket(self) -> Path:
        return self.dir / "admin.sock"

    # the process

    def master_pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        return pid if cmdline and os.path.basename(cmdline[0]) == b"haproxy" else None

    def running(self) -> bool:
        return self.master_pid() is not None

    def _prepare_dir(self) -> None:
        ensure_private_tmpfs(self.dir, self.cfg.tmpfs_mb)
        self.access.start()  # on the tmpfs, once it is mounted
        default = self.dir / "default.pem"
        if not default.exists():
            write_private(default, self_signed_pem("hangar-edge-default"))

    def _write(self, table: RoutingTable, *, with_state: bool) -> Path:
        """Render into a fresh versioned directory; return it (not yet live)."""
        digest = table.shape_digest()[:16]
        conf = self.dir / f"conf.{digest}.{time.monotonic_ns()}"
        conf.mkdir(mode=0o700)
        rendered = render(table, self.cfg, conf, with_state=with_state)
        (conf / "default.pem").symlink_to(self.dir / "default.pem")
        for name, text in rendered.maps.items():
            write_private(conf / name, text)
        for name, pem in rendered.certs.items():
            write_private(conf / name, pem)
        write_private(conf / "certs.list", rendered.crt_list)
        write_private(conf / "haproxy.cfg", rendered.config)
        return conf

    def validate(self, conf: Path) -> None:
        """``haproxy -c``; CommandError with HAProxy's own words if it refuses."""
        hostcmd.run([self.binary, "-c", "-f", str(conf / "haproxy.cfg")], timeout=60)

    def _swap(self, conf: Path) -> Path | None:
        """Make ``conf`` current; returns the previous target."""
        previous = Path(os.readlink(self.current)) if self.current.is_symlink() else None
        tmp = self.dir / "current.new"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(conf)
        os.replace(tmp, self.current)
        if previous is not None:
            link = self.dir / "previous"
            tmp.symlink_to(previous)
            os.replace(tmp, link)
        return previous

    def _start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.master_socket.unlink()
        hostcmd.run(
            [
                self.binary,
                "-W",
                "-D",
                "-S",
                f"{self.master_socket},mode,600",
                "-p",
                str(self.pidfile),
                "-f",
                str(self.current / "haproxy.cfg"),
            ],
            timeout=60,
        )
        self._wait_worker(None)

    def _procs(self) -> tuple[list[int], int]:
        """The current (not old) workers' pids and the master's failed-reload count."""
        text = _unix_command(self.master_socket, "show proc")
        pids: list[int] = []
        failed = 0
        section = ""
        for line in text.splitlines():
            if line.startswith("#"):
                section = line.strip("# ").lower()
                continue
            parts = line.split()
            if len(parts) >= 2 and parts[1] == "master" and "[failed:" in line:
                failed = int(line.split("[failed:", 1)[1].split("]", 1)[0])
            if section == "workers" and len(parts) >= 2 and parts[1] == "worker":
                pids.append(int(parts[0]))
        return pids, failed

    def _wait_worker(
        self, old: list[int] | None, failed_before: int = 0, timeout: float = 15.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                workers, failed = self._procs()
            except OSError:
                workers, failed = [], failed_before
            if failed > failed_before:
                raise CommandError(
                    ["haproxy", "reload"], 1, "the master could not load the new configuration"
                )
            if workers and (old is None or not set(workers) & set(old)):
                return
            time.sleep(0.05)
        raise CommandError(["haproxy", "reload"], 1, "no new worker took over after the reload")

    def _reload(self) -> None:
        old, failed = self._procs()
        _unix_command(self.master_socket, "reload")
        self._wait_worker(old, failed)
        self.reloads += 1

    def _cleanup(self) -> None:
        keep = {self.current.resolve(strict=False).name}
        if (self.dir / "previous").is_symlink():
            keep.add((self.dir / "previous").resolve(strict=False).name)
        for child in self.dir.glob("conf.*"):
            if child.name not in keep:
                shutil.rmtree(child, ignore_errors=True)

    # applying

    def apply(self, table: RoutingTable) -> bool:
        """Make the edge serve ``table``; True if HAProxy's configuration changed.

        A part of the table that HAProxy refuses or cannot bind (see
        ``edge.quarantine``) is left out and everything else is applied; the
        left-out parts are in ``quarantined`` and ``status()``, are tried again
        every ``retry_after`` seconds, and come back once their cause is gone.
        Raises CommandError when anything is left out, or (after restoring the
        old configuration) when HAProxy refuses even the rest: the edge always
        keeps serving the last good table.
        """
        asked = table.shape_digest()
        retry = self.quarantined and time.monotonic() >= self._quarantined_at + self.retry_after
        if asked == self._asked and self.running() and not retry:
            return self._apply_table(without(table, self.quarantined))
        try:
            changed = self._apply_table(table)
            left_out: dict[str, str] = {}
        except CommandError:
            left_out = self._culprits(table)
            if not left_out:
                raise
            first = self.last_error
            changed = self._apply_table(without(table, left_out))
            self.last_error = first
        self._asked = asked
        self.quarantined = left_out
        self._quarantined_at = time.monotonic()
        if left_out:
            shown = "; ".join(f"{key}: {why}" for key, why in sorted(left_out.items()))
            self.last_error = f"{self.last_error}; left out of the edge: {shown}"
            log.error("edge: %s", self.last_error)
            raise CommandError(["haproxy"], 1, f"left out of the edge: {shown}")
        return changed

    def _accepts(self, table: RoutingTable) -> bool:
        conf = self._write(table, with_state=True)
        try:
            self.validate(conf)
        except CommandError:
            return False
        finally:
            shutil.rmtree(conf, ignore_errors=True)
        return True

    def _refused(self, table: RoutingTable, keys: list[str]) -> list[str]:
        """The units among ``keys`` HAProxy refuses, found by halving (few checks for a few)."""
        if not keys or self._accepts(only(table, keys)):
            return []
        if len(keys) == 1:
            return keys
        half = len(keys) // 2
        return self._refused(table, keys[:half]) + self._refused(table, keys[half:])

    def _culprits(self, table: RoutingTable) -> dict[str, str]:
        """What to leave out of ``table`` so the rest applies; {} if it is not one unit's fault."""
        busy = ports_in_use(table, self.cfg.bind_host, self._own_ports)
        rest = without(table, busy)
        if (busy and self._accepts(rest)) or not self._accepts(only(rest, [])):
            return busy  # nothing else to blame (or the edge's own part is refused)
        refused = {key: "HAProxy refused it" for key in self._refused(rest, units(rest))}
        return busy | refused

    def _apply_table(self, table: RoutingTable) -> bool:
        shape = table.shape_digest()
        if shape == self._shape and self.running():
            self._apply_states(table.states())
            self.last_applied = time.time()
            return False
        self._prepare_dir()
        conf = self._write(table, with_state=True)
        try:
            self.validate(conf)
        except CommandError as exc:
            shutil.rmtree(conf, ignore_errors=True)
            self.last_error = f"HAProxy refused the new configuration: {exc.stderr.strip()}"
            raise
        previous = self._swap(conf)
        try:
            if self.running():
                self._reload()
            else:
                self._start()
        except (CommandError, OSError) as exc:
            if previous is not None:
                self._swap(previous)
                with contextlib.suppress(CommandError, OSError):
                    self._reload()
            self.last_error = f"reload failed, previous configuration restored: {exc}"
            raise CommandError(["haproxy", "reload"], 1, str(exc)) from exc
        self._shape = shape
        self._states = table.states()
        self._own_ports = frozenset(
            {
                self.cfg.http_port,
                self.cfg.https_port,
                self.cfg.metrics_port,
                *(r.port for r in table.tcp),
            }
        )
        self.last_error = ""
        self.last_applied = time.time()
        self._cleanup()
        log.info(
            "edge configuration applied (%d http routes, %d tcp)", len(table.http), len(table.tcp)
        )
        return True

    def _apply_states(self, states: dict[tuple[str, str], bool]) -> None:
        changed = [(key, up) for key, up in sorted(states.items()) if self._states.get(key) != up]
        # Machines entering rotation first: the worker serves requests between
        # two commands, and a backend must never be left with no server at all.
        changed.sort(key=lambda item: not item[1])
        commands = [
            f"set server {backend}/{server} state {'ready' if up else 'maint'}"
            for (backend, server), up in changed
        ]
        if not commands:
            return
        reply = _unix_command(self.admin_socket, ";".join(commands))
        if reply.strip():
            raise CommandError(["haproxy", "set server"], 1, reply.strip())
        self._states = dict(states)

    def stop(self) -> None:
        pid = self.master_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
            deadline = time.monotonic() + 10
            while self.master_pid() is not None and time.monotonic() < deadline:
                time.sleep(0.05)
        self._shape = None
        self.access.close()

    def status(self) -> dict[str, Any]:
        """Listeners, backends and servers as HAProxy sees them now (``show stat``)."""
        if not self.running():
            return {
                "running": False,
                "error": self.last_error,
                "quarantined": dict(self.quarantined),
                "proxies": [],
            }
        try:
            text = _unix_command(self.admin_socket, "show stat")
        except OSError as exc:
            return {"running": True, "error": f"runtime API: {exc}", "proxies": []}
        rows = list(csv.DictReader(io.StringIO(text.lstrip("# "))))
        proxies = [
            {
                "proxy": r["pxname"],
                "name": r["svname"],
                "status": r["status"],
                "sessions": int(r["scur"] or 0),
                "total": int(r["stot"] or 0),
                "address": r.get("addr", ""),
                "check": r.get("check_status", ""),
            }
            for r in rows
            if r.get("pxname")
        ]
        return {
            "running": True,
            "error": self.last_error,
            "quarantined": dict(self.quarantined),
            "reloads": self.reloads,
            "last_applied": self.last_applied,
            "proxies": proxies,
        }

    def http_counts(self, app: str) -> tuple[int, int] | None:
        """(responses, 5xx responses) HAProxy has sent for ``app`` since it last (re)started.

        None when HAProxy is not running, does not answer, or has no such backend.
        """
        if not self.running():
            return None
        try:
            text = _unix_command(self.admin_socket, "show stat", timeout=2.0)
        except OSError:
            return None
        backend = http_backend(app)
        for row in csv.DictReader(io.StringIO(text.lstrip("# "))):
            if row.get("pxname") == backend and row.get("svname") == "BACKEND":
                codes = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other")
                try:
                    total = sum(int(row.get(c) or 0) for c in codes)
                    return total, int(row.get("hrsp_5xx") or 0)
                except ValueError:
                    return None
        return None


def _unix_command(path: Path, command: str, timeout: float = 10.0) -> str:
    """Send one command line to an HAProxy CLI socket and read the whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        # The master's CLI keeps a connection open after a command; "quit" ends it.
        sock.sendall(command.encode() + b";quit\n")
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")
