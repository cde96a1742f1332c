"""Relaying exec to another host's agent: each command to its own host, once."""

from __future__ import annotations

import threading

import pytest

from hangar.contract.execs import ExecResult
from hangar.controlplane.execbroker import ExecBroker
from hangar.errors import Conflict, WaitTimeout


def _agent(broker: ExecBroker, host: str, answer: ExecResult | None, error: str | None) -> None:
    while True:
        for order in broker.pending(host):
            assert broker.pending(host) == []  # handed out once
            assert not broker.finish("host_other", order.id, answer)  # not another host's
            assert broker.finish(host, order.id, answer, error)
            return


def test_a_command_goes_to_its_host_and_the_answer_comes_back() -> None:
    broker = ExecBroker()
    done = ExecResult(0, b"hi\n", b"")
    agent = threading.Thread(target=_agent, args=(broker, "host_b", done, None))
    agent.start()
    assert broker.run("host_b", "m_1", ["echo", "hi"], 5) == done
    agent.join()
    assert not broker.has_pending("host_b")


def test_a_host_that_cannot_run_it_says_why() -> None:
    broker = ExecBroker()
    agent = threading.Thread(
        target=_agent, args=(broker, "host_b", None, "machine m_1 is not running")
    )
    agent.start()
    with pytest.raises(Conflict, match="not running"):
        broker.run("host_b", "m_1", ["true"], 5)
    agent.join()


def test_a_host_that_never_polls_times_out_and_leaves_nothing_queued() -> None:
    broker = ExecBroker()
    with pytest.raises(WaitTimeout, match="did not pick up"):
        broker.run("host_b", "m_1", ["true"], 5, pickup=0.1)
    assert not broker.has_pending("host_b") and broker.pending("host_b") == []
