"""Following rotated NDJSON logs by cursor: every line once, none lost to rotation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hangar.agent.apilink import LogShipper
from hangar.controlplane.logstore import LogStore
from hangar.telemetry.logfiles import RotatingLog, read_all, read_since


def _lines(records: list[dict[str, Any]]) -> list[str]:
    return [str(r["line"]) for r in records]


def test_a_cursor_follows_a_log_across_rotations(tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    log = RotatingLog(path, max_bytes=400, keep=3)
    seen: list[str] = []
    cursor = None
    for n in range(40):
        log.write("stdout", f"line {n:02d}".encode())
        if n % 7 == 0:  # the reader falls behind by several rotations' worth, not more
            records, cursor = read_since(path, cursor)
            seen += _lines(records)
    records, cursor = read_since(path, cursor)
    seen += _lines(records)
    assert seen == [f"line {n:02d}" for n in range(40)]
    assert read_since(path, cursor) == ([], cursor)  # nothing new: nothing again
    log.close()


def test_a_line_being_written_waits_and_the_budget_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    full = [json.dumps({"ts": "t", "stream": "stdout", "line": "x" * 200}) for _ in range(1000)]
    path.write_text("\n".join(full) + "\n" + '{"ts": "t", "stre')
    first, cursor = read_since(path, None, budget=1000)  # at least 64 KiB a call
    assert 0 < len(first) < 400  # only part of the 230 KB
    rest, cursor = read_since(path, cursor, budget=1 << 20)
    assert len(first) + len(rest) == 1000  # the half-written line is not read yet
    with path.open("a") as handle:
        handle.write('am": "stderr", "line": "done"}\n')
    last, _ = read_since(path, cursor)
    assert _lines(last) == ["done"]
    assert len(read_all(path)) == 1001


class _Runtime:
    def __init__(self, root: Path) -> None:
        self.root = root

    def log_path(self, machine_id: str) -> Path:
        return self.root / machine_id / "output.log"


def test_the_shipper_moves_on_only_after_a_report_is_taken(tmp_path: Path) -> None:
    (tmp_path / "m_1").mkdir()
    log = RotatingLog(tmp_path / "m_1/output.log")
    log.write("stdout", b"hello")
    shipper = LogShipper(_Runtime(tmp_path), tmp_path / "cursors.json")  # type: ignore[arg-type]
    assert _lines(shipper.collect(["m_1"])["m_1"]) == ["hello"]
    # The report failed (no commit): the same line goes again.
    assert _lines(shipper.collect(["m_1"])["m_1"]) == ["hello"]
    shipper.commit(["m_1"])
    log.write("stderr", b"world")
    again = LogShipper(_Runtime(tmp_path), tmp_path / "cursors.json")  # type: ignore[arg-type]
    assert _lines(again.collect(["m_1"])["m_1"]) == ["world"]  # a restart resumes
    log.close()


def test_the_log_store_takes_only_machine_ids(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    store.append("m_0123456789abcdef", [{"ts": "t", "stream": "stdout", "line": "ok"}])
    assert _lines(store.read("m_0123456789abcdef")) == ["ok"]
    assert store.read("m_fedcba9876543210") == []
    with pytest.raises(ValueError, match="not a machine id"):
        store.append("../../etc", [])
