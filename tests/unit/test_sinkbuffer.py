"""A log sink's disk buffer: nothing lost across restarts, drops counted exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hangar.telemetry import sinkbuffer
from hangar.telemetry.sinkbuffer import SinkBuffer


def rec(n: int, pad: int = 0) -> dict[str, object]:
    return {"n": n, "line": "x" * pad}


def size_of(r: dict[str, object]) -> int:
    return len(json.dumps(r, separators=(",", ":"))) + 1


def test_records_come_out_in_order_and_survive_a_restart(tmp_path: Path) -> None:
    buffer = SinkBuffer(tmp_path, cap=1 << 20)
    buffer.append([rec(n) for n in range(10)])
    assert [r["n"] for r in buffer.peek(4)] == [0, 1, 2, 3]
    buffer.ack(4)
    buffer.append([rec(10)])
    again = SinkBuffer(tmp_path, cap=1 << 20)  # a restarted control plane
    assert [r["n"] for r in again.peek(100)] == list(range(4, 11))
    assert again.take_dropped() == 0


def test_an_unacknowledged_batch_is_sent_again(tmp_path: Path) -> None:
    buffer = SinkBuffer(tmp_path, cap=1 << 20)
    buffer.append([rec(n) for n in range(3)])
    assert [r["n"] for r in buffer.peek(2)] == [0, 1]  # pushed, then the process died
    assert [r["n"] for r in SinkBuffer(tmp_path, cap=1 << 20).peek(10)] == [0, 1, 2]


@pytest.mark.parametrize("cap_records", [3, 5, 8])
def test_the_cap_drops_the_oldest_and_counts_them_exactly(tmp_path: Path, cap_records: int) -> None:
    one = size_of(rec(0, 100))
    buffer = SinkBuffer(tmp_path, cap=max(1024, one * cap_records))
    fit = buffer.cap // one
    buffer.append([rec(n, 100) for n in range(fit + 7)])
    kept = [r["n"] for r in buffer.peek(1000)]
    assert kept == list(range(7, fit + 7))
    assert buffer.take_dropped() == 7 and buffer.take_dropped() == 0
    buffer.append([rec(100, 100), rec(101, 100)])
    assert [r["n"] for r in buffer.peek(1000)] == [*range(9, fit + 7), 100, 101]
    assert buffer.size() <= buffer.cap
    assert buffer.take_dropped() == 2


def test_drops_not_yet_reported_survive_a_restart(tmp_path: Path) -> None:
    buffer = SinkBuffer(tmp_path, cap=1024)
    buffer.append([rec(n, 200) for n in range(10)])
    dropped = 10 - len(buffer.peek(100))
    assert dropped > 0
    assert SinkBuffer(tmp_path, cap=1024).take_dropped() == dropped


def test_a_torn_last_line_is_not_read(tmp_path: Path) -> None:
    buffer = SinkBuffer(tmp_path, cap=1 << 20)
    buffer.append([rec(1), rec(2)])
    (segment,) = tmp_path.glob("*.ndjson")
    with open(segment, "ab") as handle:
        handle.write(b'{"n": 3, "li')  # a crash mid-append: never acknowledged to anyone
    assert [r["n"] for r in SinkBuffer(tmp_path, cap=1 << 20).peek(10)] == [1, 2]


def test_segments_roll_and_acked_ones_are_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sinkbuffer, "_SEGMENT_BYTES", 200)
    buffer = SinkBuffer(tmp_path, cap=1 << 20)
    for n in range(20):
        buffer.append([rec(n, 50)])
    assert len(list(tmp_path.glob("*.ndjson"))) > 3
    buffer.ack(18)
    assert [r["n"] for r in buffer.peek(10)] == [18, 19]
    assert len(list(tmp_path.glob("*.ndjson"))) <= 2


@pytest.mark.parametrize("cut", [1, 7, 20])
def test_a_line_torn_by_a_crash_mid_append_is_cut_not_glued_to_the_next(
    tmp_path: Path, cut: int
) -> None:
    """A kill inside ``append`` leaves part of a line; the records after it still read."""
    buffer = SinkBuffer(tmp_path, cap=1 << 20)
    buffer.append([rec(n) for n in range(3)])
    (segment,) = tmp_path.glob("*.ndjson")
    torn = json.dumps(rec(3), separators=(",", ":")).encode()[:cut]
    with open(segment, "ab") as handle:
        handle.write(torn)  # the crash: no newline, never acknowledged
    again = SinkBuffer(tmp_path, cap=1 << 20)
    again.append([rec(4), rec(5)])
    assert [r["n"] for r in again.peek(100)] == [0, 1, 2, 4, 5]
