"""The agent's offload pool: one job per key, a few per organization, nothing on the caller."""

from __future__ import annotations

import threading
import time

from hangar.agent.offload import Offload


def test_an_organization_gets_only_its_slots() -> None:
    pool = Offload(workers=4, per_org=2)
    release = threading.Event()
    try:
        assert pool.submit("a1", "globex", release.wait)
        assert pool.submit("a2", "globex", release.wait)
        # A third job of the same organization waits for a slot...
        assert not pool.submit("a3", "globex", release.wait)
        # ...while another organization's starts at once and finishes.
        assert pool.submit("b1", "acme", lambda: "done")
        deadline = time.monotonic() + 10
        finished: dict[str, object] = {}
        while "b1" not in finished and time.monotonic() < deadline:
            finished.update({k: f.result() for k, f in pool.take().items()})
            time.sleep(0.01)
        assert finished == {"b1": "done"}
        # One job per key: a second submit of a running key is refused.
        assert not pool.submit("a1", "acme", lambda: None)
        assert pool.busy("a1") and pool.running("globex") == 2
    finally:
        release.set()
        pool.shutdown()


def test_finishing_wakes_the_loop_and_errors_are_kept() -> None:
    pool = Offload(workers=1, per_org=1)
    woke = threading.Event()
    pool.on_done = woke.set

    def boom() -> None:
        raise RuntimeError("no")

    assert pool.submit("x", "org", boom)
    assert woke.wait(10)
    taken = pool.take()
    assert isinstance(taken["x"].exception(), RuntimeError)
    assert not pool.busy("x") and not pool.pending()
    pool.shutdown()
