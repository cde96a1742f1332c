from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from hangar.domain.reconcile import (
    Action,
    ActionKind,
    Desired,
    Observed,
    RestartPolicy,
    backoff,
    plan,
)

IDS = [f"m{i}" for i in range(6)]
policies = st.builds(
    RestartPolicy,
    policy=st.sampled_from(["no", "always", "on-failure"]),
    max_retries=st.integers(0, 5),
    window=st.floats(10, 600),
)
desired_st = st.dictionaries(
    st.sampled_from(IDS),
    st.tuples(st.integers(1, 3), st.sampled_from(["started", "stopped", "destroyed"]), policies),
    max_size=6,
).map(lambda d: {k: Desired(k, v, s, p) for k, (v, s, p) in d.items()})
observed_st = st.dictionaries(
    st.sampled_from(IDS),
    st.tuples(
        st.one_of(st.none(), st.integers(1, 3)),
        st.sampled_from(["running", "stopped"]),
        st.one_of(st.none(), st.integers(0, 255)),
    ),
    max_size=6,
).map(lambda d: {k: Observed(k, v, s, exit_code=c, finished_at=0.0) for k, (v, s, c) in d.items()})


def apply(
    actions: list[Action], desired: dict[str, Desired], observed: dict[str, Observed], now: float
) -> dict[str, Observed]:
    """A model runtime: every action succeeds and machines stay up."""
    out = dict(observed)
    for a in actions:
        seen = out.get(a.machine_id)
        want = desired.get(a.machine_id)
        if a.kind is ActionKind.REMOVE:
            out.pop(a.machine_id, None)
        elif a.kind is ActionKind.STOP:
            assert seen is not None
            out[a.machine_id] = dataclasses.replace(
                seen, status="stopped", exit_code=0, finished_at=now
            )
        elif a.kind in (ActionKind.START, ActionKind.REPLACE):
            assert want is not None
            out[a.machine_id] = Observed(a.machine_id, want.version, "running")
        elif a.kind is ActionKind.RESTART:
            assert seen is not None
            out[a.machine_id] = dataclasses.replace(
                seen, status="running", restarts=(*seen.restarts, now)
            )
        elif a.kind is ActionKind.FAIL:
            assert seen is not None
            out[a.machine_id] = dataclasses.replace(seen, failed=True)
    return out


@given(desired_st, observed_st)
def test_plan_converges(desired: dict[str, Desired], observed: dict[str, Observed]) -> None:
    now = 1000.0
    for _ in range(4):
        actions = plan(desired, observed, now)
        waits = [a.at for a in actions if a.kind is ActionKind.WAIT]
        observed = apply(actions, desired, observed, now)
        now = max([now + 1, *[w for w in waits if w is not None]])
    assert [a for a in plan(desired, observed, now) if a.kind is not ActionKind.WAIT] == []
    for machine_id, want in desired.items():
        seen = observed.get(machine_id)
        if want.state == "destroyed":
            assert seen is None
        if want.state == "started" and seen is not None and not seen.failed:
            assert seen.version == want.version
    assert set(observed) <= set(desired)  # orphans are gone


@given(desired_st, observed_st, st.floats(0, 10_000))
def test_plan_touches_only_known_machines(
    desired: dict[str, Desired], observed: dict[str, Observed], now: float
) -> None:
    for action in plan(desired, observed, now):
        assert action.machine_id in desired or action.machine_id in observed
        if action.machine_id not in desired:
            assert action.kind is ActionKind.REMOVE


@given(policies.filter(lambda p: p.policy != "no"), st.integers(1, 255))
@settings(max_examples=50)
def test_a_crash_loop_is_bounded_then_failed(policy: RestartPolicy, code: int) -> None:
    """A machine that dies at once after every start: restarts stay within the policy."""
    want = {"m": Desired("m", 1, "started", policy)}
    seen = {"m": Observed("m", 1, "stopped", exit_code=code, finished_at=0.0)}
    now, restarts, failed = 0.0, [], False
    for _ in range(200):
        actions = plan(want, seen, now)
        if not actions:
            break
        (action,) = actions
        if action.kind is ActionKind.WAIT:
            assert action.at is not None and action.at > now
            now = action.at
            continue
        if action.kind is ActionKind.FAIL:
            failed = True
            seen = apply([action], want, seen, now)
            continue
        assert action.kind is ActionKind.RESTART
        restarts.append(now)
        seen = {
            "m": Observed(
                "m",
                1,
                "stopped",
                exit_code=code,
                finished_at=now,
                restarts=(*seen["m"].restarts, now),
            )
        }
    # Restarts within any window never exceed the policy...
    for t in restarts:
        assert len([r for r in restarts if t <= r < t + policy.window]) <= policy.max_retries
    # ...and a loop fast enough to use them all up inside one window is failed, for good.
    if sum(backoff(policy, n) for n in range(policy.max_retries + 1)) < policy.window:
        assert failed
    if failed:
        assert plan(want, seen, now + 10_000) == []


def test_clean_exit_is_not_restarted_on_failure_policy() -> None:
    want = {"m": Desired("m", 1, "started", RestartPolicy("on-failure"))}
    assert plan(want, {"m": Observed("m", 1, "stopped", exit_code=0, finished_at=0)}, 99) == []
    always = {"m": Desired("m", 1, "started", RestartPolicy("always"))}
    (action,) = plan(always, {"m": Observed("m", 1, "stopped", exit_code=0, finished_at=0)}, 99)
    assert action.kind is ActionKind.RESTART


def test_backoff_doubles_and_is_capped() -> None:
    p = RestartPolicy(base_delay=0.5, max_delay=30)
    assert [backoff(p, n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_new_version_replaces_even_a_failed_machine() -> None:
    want = {"m": Desired("m", 2, "started")}
    seen = {"m": Observed("m", 1, "stopped", exit_code=1, failed=True)}
    assert plan(want, seen, 0) == [Action(ActionKind.REPLACE, "m", "version 1 -> 2")]


def test_a_new_generation_restarts_in_place() -> None:
    want = {"m": Desired("m", 1, "started", generation=2)}
    seen = {"m": Observed("m", 1, "running", generation=1)}
    assert plan(want, seen, 0) == [Action(ActionKind.REPLACE, "m", "restart requested")]
    assert plan(want, {"m": Observed("m", 1, "running", generation=2)}, 0) == []


@given(st.floats(0, 1e9))
def test_a_machine_that_vanished_unwatched_is_restarted_by_its_policy(now: float) -> None:
    """A reboot leaves no exit time: waiting for a backoff "from now" would wait forever."""
    vanished = {"m": Observed("m", 1, "stopped", exit_code=None, finished_at=None)}
    for policy, restarted in (("always", True), ("on-failure", True), ("no", False)):
        want = {"m": Desired("m", 1, "started", RestartPolicy(policy))}
        kinds = [a.kind for a in plan(want, vanished, now)]
        assert kinds == ([ActionKind.RESTART] if restarted else [])
    # The retries still bound it.
    want = {"m": Desired("m", 1, "started", RestartPolicy("always", max_retries=2))}
    spent = {"m": Observed("m", 1, "stopped", restarts=(now, now))}
    assert [a.kind for a in plan(want, spent, now)] == [ActionKind.FAIL]
