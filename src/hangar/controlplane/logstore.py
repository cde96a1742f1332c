"""Output of machines on other hosts, as their agents ship it to the control plane.

Kept per machine under ``<data dir>/logs/<machine id>/`` (inside the 0700
data directory: output may hold health data) in the same rotated NDJSON
files the hosts write, so ``hangar logs`` reads both the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hangar.telemetry.logfiles import RotatingLog, read_all, read_since

__all__ = ["LogStore"]

_ID = re.compile(r"^m_[0-9a-f]{16}$")


class LogStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, machine_id: str) -> Path:
        if not _ID.fullmatch(machine_id):
            raise ValueError(f"not a machine id: {machine_id!r}")
        return self.root / machine_id / "output.log"

    def append(self, machine_id: str, records: Iterable[Mapping[str, Any]]) -> None:
        path = self._path(machine_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        log = RotatingLog(path)
        try:
            for record in records:
                log.write_record(
                    {"ts": record["ts"], "stream": record["stream"], "line": record["line"]}
                )
        finally:
            log.close()

    def read(self, machine_id: str) -> list[dict[str, Any]]:
        path = self._path(machine_id)
        return read_all(path) if path.parent.exists() else []

    def read_since(
        self, machine_id: str, cursor: dict[str, int] | None, budget: int
    ) -> tuple[list[dict[str, Any]], dict[str, int] | None]:
        path = self._path(machine_id)
        return read_since(path, cursor, budget) if path.parent.exists() else ([], cursor)
