"""Output of machines on other hosts, as their agents ship it to the control plane.

Kept per machine under ``<data dir>/logs/<machine id>/`` (inside the 0700
data directory: output may hold health data) in the same rotated NDJSON
files the hosts write, so ``hangar logs`` reads both the same way.

Access lines of edges on other hosts are kept per app and edge host, under
``<data dir>/logs/access/<app id>/<host id>.log``: by the app's id, so an
app name freed and taken again never inherits another app's lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hangar.telemetry.logfiles import RotatingLog, read_all, read_since

__all__ = ["LogStore"]

_ID = re.compile(r"^m_[0-9a-f]{16}$")
_ROW_ID = re.compile(r"^[a-z]{1,8}_[0-9a-f]{16}$")


def _write(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = RotatingLog(path)
    try:
        for record in records:
            log.write_record(
                {"ts": record["ts"], "stream": record["stream"], "line": record["line"]}
            )
    finally:
        log.close()


class LogStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, machine_id: str) -> Path:
        if not _ID.fullmatch(machine_id):
            raise ValueError(f"not a machine id: {machine_id!r}")
        return self.root / machine_id / "output.log"

    def append(self, machine_id: str, records: Iterable[Mapping[str, Any]]) -> None:
        _write(self._path(machine_id), records)

    def read(self, machine_id: str) -> list[dict[str, Any]]:
        path = self._path(machine_id)
        return read_all(path) if path.parent.exists() else []

    def read_since(
        self, machine_id: str, cursor: dict[str, int] | None, budget: int
    ) -> tuple[list[dict[str, Any]], dict[str, int] | None]:
        path = self._path(machine_id)
        return read_since(path, cursor, budget) if path.parent.exists() else ([], cursor)

    def _access_path(self, app_id: str, host_id: str) -> Path:
        for part in (app_id, host_id):
            if not _ROW_ID.fullmatch(part):
                raise ValueError(f"not an id: {part!r}")
        return self.root / "access" / app_id / f"{host_id}.log"

    def append_access(
        self, app_id: str, host_id: str, records: Iterable[Mapping[str, Any]]
    ) -> None:
        _write(self._access_path(app_id, host_id), records)

    def access_hosts(self, app_id: str) -> list[str]:
        """The edge hosts that shipped access lines of the app, by id."""
        if not _ROW_ID.fullmatch(app_id):
            raise ValueError(f"not an id: {app_id!r}")
        directory = self.root / "access" / app_id
        if not directory.is_dir():
            return []
        names = {p.name.split(".", 1)[0] for p in directory.iterdir()}
        return sorted(n for n in names if _ROW_ID.fullmatch(n))

    def read_access(self, app_id: str, host_id: str) -> list[dict[str, Any]]:
        return read_all(self._access_path(app_id, host_id))

    def read_access_since(
        self, app_id: str, host_id: str, cursor: dict[str, int] | None, budget: int
    ) -> tuple[list[dict[str, Any]], dict[str, int] | None]:
        return read_since(self._access_path(app_id, host_id), cursor, budget)
