"""The machine lifecycle table, and the report path that must go through it."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from hangar.controlplane.hostlink import apply_report
from hangar.controlplane.machines import observe_state, set_state
from hangar.domain.machines import (
    OBSERVED,
    TERMINAL,
    MachineState,
    can_transition,
    transition,
)
from hangar.errors import Conflict
from hangar.store.tables import App, Base, Host, Machine, MachineEvent, Org

S = MachineState


@pytest.mark.parametrize(
    ("a", "b", "ok"),
    [
        ("created", "starting", True),
        ("started", "stopping", True),
        ("stopped", "starting", True),
        ("destroyed", "starting", False),
        ("destroying", "started", False),
        ("stopping", "started", False),
        ("started", "started", True),
    ],
)
def test_state_machine(a: str, b: str, ok: bool) -> None:
    assert can_transition(MachineState(a), MachineState(b)) is ok
    if ok:
        assert transition(MachineState(a), MachineState(b)) == MachineState(b)
    else:
        with pytest.raises(Conflict):
            transition(MachineState(a), MachineState(b))


def test_only_destroying_leads_to_destroyed() -> None:
    for state in MachineState:
        if state not in (MachineState.DESTROYING, MachineState.DESTROYED):
            assert not can_transition(state, MachineState.DESTROYED)


# Every move the report path made while the deploy, host-link, network and
# machine-update tests ran against real machines.
SEEN_IN_REPORTS = [
    ("created", "started"),
    ("created", "starting"),
    ("created", "stopped"),
    ("failed", "stopped"),
    ("started", "failed"),
    ("started", "stopped"),
    ("starting", "failed"),
    ("starting", "started"),
    ("stopped", "started"),
    ("stopped", "starting"),
]


@pytest.mark.parametrize(("a", "b"), SEEN_IN_REPORTS)
def test_the_moves_reports_make_are_allowed(a: str, b: str) -> None:
    assert transition(MachineState(a), MachineState(b)) == MachineState(b)


@given(st.sampled_from(sorted({S.CREATED, *OBSERVED})), st.sampled_from(sorted(OBSERVED)))
def test_any_observed_state_can_follow_a_reported_one(a: MachineState, b: MachineState) -> None:
    """A report is a sample of reality: between two of them anything can have happened."""
    assert can_transition(a, b)


@given(st.sampled_from(list(MachineState)), st.sampled_from(list(MachineState)))
def test_nothing_comes_back(a: MachineState, b: MachineState) -> None:
    if a in TERMINAL:
        assert can_transition(a, b) is (a == b)
    if b == S.CREATED:
        assert can_transition(a, b) is (a == b)


@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    now = dt.datetime.now(dt.UTC)
    with Session(engine) as session:
        session.add(Org(id="org_1", name="acme", created_at=now))
        session.add(App(id="app_1", org_id="org_1", name="web", created_by="t", created_at=now))
        for n in (1, 2):
            session.add(
                Host(
                    id=f"host_{n}",
                    name=f"h{n}",
                    region="local",
                    number=n,
                    state="active",
                    memory_mb=0,
                    created_at=now,
                )
            )
        session.add(machine_row("m_1"))
        session.flush()
        yield session
    engine.dispose()


_addresses = itertools.count(2)


def machine_row(machine_id: str, state: str = "created", desired: str = "started") -> Machine:
    now = dt.datetime.now(dt.UTC)
    return Machine(
        id=machine_id,
        app_id="app_1",
        host_id="host_1",
        version=1,
        desired=desired,
        state=state,
        running_version=None,
        healthy=None,
        exit_code=None,
        address=f"fd00::{next(_addresses):x}",
        detail="",
        created_at=now,
        updated_at=now,
    )


def info(status: str, **more: Any) -> dict[str, Any]:
    return {"status": status, "healthy": None, "exit_code": None, "checks": [], **more}


def report(
    session: Session,
    infos: Mapping[str, Mapping[str, Any]],
    errors: Mapping[str, str] | None = None,
    host: str = "host_1",
) -> None:
    apply_report(session, host, infos, errors or {})
    session.flush()


def events(session: Session, machine_id: str = "m_1") -> list[tuple[str, str]]:
    rows = session.execute(
        select(MachineEvent).where(MachineEvent.machine_id == machine_id).order_by(MachineEvent.id)
    ).scalars()
    return [(e.kind, e.detail) for e in rows]


def state(session: Session, machine_id: str = "m_1") -> str:
    row = session.get(Machine, machine_id)
    assert row is not None
    return row.state


def test_reports_move_a_machine_through_the_table_and_record_each_move(session: Session) -> None:
    report(session, {"m_1": info("running", version=1, healthy=True)})
    assert state(session) == "started"
    report(session, {"m_1": info("running", version=1, healthy=True)})  # no change: no event
    report(session, {"m_1": info("stopped", version=1, exit_code=3)})
    assert state(session) == "stopped"
    report(session, {"m_1": info("stopped", version=1, exit_code=3, failed=True)})
    assert state(session) == "failed"
    report(session, {"m_1": info("running", version=2)})  # a new version brought it back
    assert state(session) == "started"
    report(session, {"m_1": info("absent")}, {"m_1": "image not found"})
    assert events(session) == [
        ("started", ""),
        ("stopped", "exit 3"),
        ("failed", "exit 3"),
        ("started", ""),
        ("failed", "image not found"),
    ]


def test_an_impossible_report_keeps_the_state_and_is_logged(
    session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    row = session.get(Machine, "m_1")
    assert row is not None
    row.state = "destroying"  # as if it were on its way out
    session.add(machine_row("m_2"))
    session.flush()
    with caplog.at_level(logging.ERROR, logger="hangar.machines"):
        report(
            session,
            {"m_1": info("running", version=1, healthy=True), "m_2": info("running", version=1)},
        )
    assert state(session) == "destroying" and events(session) == []
    assert "a destroying machine cannot become started" in caplog.text
    # The rest of what the host saw is still recorded, and the rest of the report applied.
    assert row.running_version == 1 and row.healthy is True
    assert state(session, "m_2") == "started" and events(session, "m_2") == [("started", "")]


def test_a_machine_in_an_unknown_state_is_refused_not_crashed(
    session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    row = session.get(Machine, "m_1")
    assert row is not None
    row.state = "levitating"
    with caplog.at_level(logging.ERROR, logger="hangar.machines"):
        report(session, {"m_1": info("running", version=1)})
    assert state(session) == "levitating" and "unknown state" in caplog.text


def test_a_report_touches_only_the_hosts_own_machines(session: Session) -> None:
    report(session, {"m_1": info("running", version=1)}, host="host_2")
    assert state(session) == "created" and events(session) == []


def test_set_state_raises_for_a_commanded_impossible_move(session: Session) -> None:
    row = session.get(Machine, "m_1")
    assert row is not None
    with pytest.raises(Conflict, match="a created machine cannot become destroyed"):
        set_state(session, row, S.DESTROYED)
    assert row.state == "created"
    assert observe_state(session, row, S.DESTROYED) is False and row.state == "created"
    set_state(session, row, S.STARTING, "assigned")
    set_state(session, row, S.STARTING, "again")  # staying put records nothing
    session.flush()
    assert row.state == "starting" and events(session) == [("starting", "assigned")]
