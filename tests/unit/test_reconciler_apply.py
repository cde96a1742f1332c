"""The reconciler's applying half against the in-memory runtime: plans become the right calls."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hangar.agent.health import HealthMonitor
from hangar.agent.reconciler import Outcome, Reconciler
from hangar.agent.runtimes import registry
from hangar.agent.runtimes.fake import Call, FakeRuntime
from hangar.contract.assignments import Assignment, CheckSpec
from hangar.domain.reconcile import ActionKind, RestartPolicy
from hangar.images import store as images_module
from hangar.images.oci import build_layout, layer_tar
from hangar.images.store import ImageStore

ADDRESS = "fd43:4343:1:1::2"
CHECK = CheckSpec("http", "http", 8080, interval=5, grace_period=1, path="/healthz")


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    path = tmp_path / "layout"
    build_layout(
        path,
        [layer_tar([])],
        config={"Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "Env": ["FROM_IMAGE=1"]},
    )
    return path


@pytest.fixture
def runtime(tmp_path: Path) -> FakeRuntime:
    built = registry.create("fake", tmp_path / "state", tmp_path / "bundles")
    assert isinstance(built, FakeRuntime)
    return built


@pytest.fixture
def images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ImageStore:
    # Nothing runs, so no machine's unprivileged uid must reach the images
    # (pytest's temporary directories are 0700 on purpose).
    monkeypatch.setattr(images_module, "require_traversable", lambda path: None)
    return ImageStore(tmp_path / "images", uid_base=os.getuid())


@pytest.fixture
def reconciler(runtime: FakeRuntime, images: ImageStore, tmp_path: Path) -> Reconciler:
    return Reconciler(runtime, images, tmp_path / "agent")


def want(layout: Path, machine_id: str = "m-1", **kw: object) -> Assignment:
    values: dict[str, object] = {
        "machine_id": machine_id,
        "app": "clinic",
        "version": 1,
        "state": "started",
        "image": f"oci:{layout}:latest",
    }
    values.update(kw)
    return Assignment(**values)  # type: ignore[arg-type]


def kinds(outcomes: list[Outcome]) -> list[tuple[ActionKind, str, bool]]:
    return [(o.action.kind, o.action.machine_id, o.ok) for o in outcomes]


def test_start_builds_the_spec_from_image_and_assignment(
    reconciler: Reconciler, runtime: FakeRuntime, layout: Path
) -> None:
    one = want(layout, env={"GREETING": "hi"}, address=ADDRESS, cpus=2, memory_mb=128)
    outcomes = reconciler.reconcile([one], time.time())
    assert kinds(outcomes) == [(ActionKind.START, "m-1", True)]
    assert runtime.state("m-1").status == "running"
    spec = runtime.machines["m-1"].spec
    assert spec.args == ["/bin/app", "--serve"]
    assert spec.env["FROM_IMAGE"] == "1" and spec.env["GREETING"] == "hi"
    assert spec.env["HANGAR_PRIVATE_IP"] == ADDRESS
    assert spec.hosts == {"m-1.vm.clinic.internal": ADDRESS}
    assert (spec.cpus, spec.memory_mb, str(spec.address)) == (2, 128, ADDRESS)
    assert reconciler.describe("m-1")["version"] == 1

    # Running at the wanted version: nothing more to do, and nothing is called.
    calls = len(runtime.calls)
    assert reconciler.reconcile([one], time.time()) == []
    assert len(runtime.calls) == calls


def test_assigned_args_override_the_image(
    reconciler: Reconciler, runtime: FakeRuntime, layout: Path
) -> None:
    reconciler.reconcile([want(layout, args=["/bin/other"])], time.time())
    assert runtime.machines["m-1"].spec.args == ["/bin/other"]


def test_new_version_replaces_the_machine(
    reconciler: Reconciler, runtime: FakeRuntime, layout: Path
) -> None:
    reconciler.reconcile([want(layout)], time.time())
    pid_v1 = runtime.state("m-1").pid
    runtime.calls.clear()
    outcomes = reconciler.reconcile([want(layout, version=2, env={"V": "2"})], time.time())
    assert kinds(outcomes) == [(ActionKind.REPLACE, "m-1", True)]
    assert runtime.calls == [Call("remove", "m-1"), Call("start", "m-1")]
    assert runtime.state("m-1").pid != pid_v1
    assert runtime.machines["m-1"].spec.env["V"] == "2"
    assert reconciler.describe("m-1")["version"] == 2


def test_new_generation_replaces_the_machine(
    reconciler: Reconciler, runtime: FakeRuntime, layout: Path
) -> None:
    reconciler.reconcile([want(layout)], time.time())
    outcomes = reconciler.reconcile([want(layout, generation=1)], time.time())
    assert kinds(outcomes) == [(ActionKind.REPLACE, "m-1", True)]
    assert reconciler.describe("m-1")["generation"] == 1


def test_stop_uses_the_assignments_signal_and_timeout(
    reconciler: Reconciler, runtime: FakeRuntime, layout: Path
) -> None:
    reconciler.reconcile([want(layout, address=ADDRESS, checks=[CHECK])], time.time())
    assert reconciler.health.watching("m-1")
    stopped = want(layout, state="stopped", kill_signal="SIGQUIT", kill_timeout=7.5)
    outcomes = reconciler.reconcile([stopped], time.time())
    assert kinds(outcomes) == [(ActionKind.STOP, "m-1", True)]
    assert runtime.called("stop") == [
        Call("stop", "m-1", (("signal", "SIGQUIT"), ("timeout", 7.5)))
    ]
    assert runtime.machines["m-1"].signals == ["SIGQUIT"]
    assert runtime.state("m-1").status == "stopped"
    assert not reconciler.health.watching("m-1")
    # Stopped as asked: the restart policy does not bring it back.
    assert reconciler.reconcile([stopped], time.time() + 3600) == []


def test_destroy_removes_the_handle_and_the_meta(
    reconciler: Reconciler, runtime: FakeRuntime, layout: Path, tmp_path: Path
) -> None:
    reconciler.reconcile([want(layout, address=ADDRESS, checks=[CHECK])], time.time())
    meta = tmp_path / "agent" / "assignments" / "m-1.json"
    assert meta.exists()
    outcomes = reconciler.reconcile([want(layout, state="destroyed")], time.time())
    assert kinds(outcomes) == [(ActionKind.REMOVE, "m-1", True)]
    assert runtime.list() == [] and runtime.state("m-1").status == "absent"
    assert not meta.exists()
    assert not reconciler.health.watching("m-1")
    assert "version" not in reconciler.describe("m-1")


def test_an_unassigned_machine_is_removed(
    reconciler: Reconciler, runtime: FakeRuntime, layout: Path
) -> None:
    reconciler.reconcile([want(layout, "m-1"), want(layout, "m-2")], time.time())
    outcomes = reconciler.reconcile([want(layout, "m-1")], time.time())
    assert kinds(outcomes) == [(ActionKind.REMOVE, "m-2", True)]
    assert runtime.list() == ["m-1"]


def test_restart_policy_counts_restarts_then_gives_up(
    reconciler: Reconciler, runtime: FakeRuntime, layout: Path
) -> None:
    policy = RestartPolicy("on-failure", max_retries=2, window=1000, base_delay=10)
    crashy = want(layout, restart=policy)
    t = 1_700_000_000.0  # whole seconds survive the runtime's ISO timestamps exactly
    reconciler.reconcile([crashy], t)

    runtime.exit("m-1", 1, at=t)
    (waiting,) = reconciler.reconcile([crashy], t + 1)
    assert waiting.action.kind is ActionKind.WAIT and waiting.action.at == t + 10
    assert runtime.called("restart") == []

    assert kinds(reconciler.reconcile([crashy], t + 20)) == [(ActionKind.RESTART, "m-1", True)]
    assert runtime.state("m-1").status == "running"
    assert reconciler.describe("m-1")["restarts"] == [t + 20]

    runtime.exit("m-1", 1, at=t + 21)
    # The second restart waits twice as long: 21 + 20.
    assert kinds(reconciler.reconcile([crashy], t + 40))[0][0] is ActionKind.WAIT
    assert kinds(reconciler.reconcile([crashy], t + 42)) == [(ActionKind.RESTART, "m-1", True)]
    assert reconciler.describe("m-1")["restarts"] == [t + 20, t + 42]

    runtime.exit("m-1", 1, at=t + 43)
    assert kinds(reconciler.reconcile([crashy], t + 100)) == [(ActionKind.FAIL, "m-1", True)]
    info = reconciler.describe("m-1")
    assert info["failed"] is True and "2 restarts" in info["reason"]
    assert info["status"] == "stopped" and info["exit_code"] == 1
    assert len(runtime.called("restart")) == 2
    # Given up: left alone until a new version comes.
    assert reconciler.reconcile([crashy], t + 200) == []
    assert kinds(reconciler.reconcile([want(layout, version=2, restart=policy)], t + 201)) == [
        (ActionKind.REPLACE, "m-1", True)
    ]
    assert reconciler.describe("m-1")["failed"] is False


def test_a_clean_exit_is_not_restarted_on_failure_only(
    reconciler: Reconciler, runtime: FakeRuntime, layout: Path
) -> None:
    t = time.time()
    reconciler.reconcile([want(layout)], t)
    runtime.exit("m-1", 0, at=t)
    assert reconciler.reconcile([want(layout)], t + 3600) == []


def test_a_failing_start_is_an_outcome_and_others_proceed(
    reconciler: Reconciler, runtime: FakeRuntime, layout: Path
) -> None:
    runtime.fail_start["m-1"] = "no space left on device"
    outcomes = reconciler.reconcile([want(layout, "m-1"), want(layout, "m-2")], time.time())
    assert kinds(outcomes) == [(ActionKind.START, "m-1", False), (ActionKind.START, "m-2", True)]
    assert "no space left on device" in outcomes[0].error
    assert runtime.list() == ["m-2"]
    # The next round tries again.
    outcomes = reconciler.reconcile([want(layout, "m-1"), want(layout, "m-2")], time.time())
    assert kinds(outcomes) == [(ActionKind.START, "m-1", True)]


def test_a_failing_stop_is_an_outcome(
    reconciler: Reconciler, runtime: FakeRuntime, layout: Path
) -> None:
    reconciler.reconcile([want(layout, "m-1"), want(layout, "m-2")], time.time())
    runtime.fail_stop["m-1"] = "runc kill: permission denied"
    stop = [want(layout, "m-1", state="stopped"), want(layout, "m-2", state="stopped")]
    outcomes = reconciler.reconcile(stop, time.time())
    assert kinds(outcomes) == [(ActionKind.STOP, "m-1", False), (ActionKind.STOP, "m-2", True)]
    assert "permission denied" in outcomes[0].error
    assert runtime.state("m-1").status == "running"
    assert runtime.state("m-2").status == "stopped"


def test_a_missing_secret_for_a_file_starts_nothing(
    runtime: FakeRuntime, images: ImageStore, layout: Path, tmp_path: Path
) -> None:
    reconciler = Reconciler(
        runtime, images, tmp_path / "agent", secret_source=lambda a: {"TOKEN": "s3cret"}
    )
    wanted = [
        want(layout, "m-1", files={"/run/token": "TOKEN"}),
        want(layout, "m-2", files={"/run/key": "MISSING"}),
    ]
    outcomes = reconciler.reconcile(wanted, time.time())
    assert kinds(outcomes) == [(ActionKind.START, "m-1", True), (ActionKind.START, "m-2", False)]
    assert "MISSING" in outcomes[1].error
    spec = runtime.machines["m-1"].spec
    assert spec.files == {"/run/token": "s3cret"} and spec.env["TOKEN"] == "s3cret"
    assert runtime.list() == ["m-1"]


def test_a_changed_image_is_refused_when_the_release_pinned_a_digest(
    reconciler: Reconciler, runtime: FakeRuntime, layout: Path
) -> None:
    pinned = "sha256:" + "0" * 64
    (outcome,) = reconciler.reconcile([want(layout, image_digest=pinned)], time.time())
    assert not outcome.ok and pinned in outcome.error
    assert runtime.called("start") == []


def test_a_restarted_agent_adopts_a_running_machine_without_touching_it(
    reconciler: Reconciler, runtime: FakeRuntime, images: ImageStore, layout: Path, tmp_path: Path
) -> None:
    one = want(layout, address=ADDRESS, checks=[CHECK])
    reconciler.reconcile([one], time.time())
    pid = runtime.state("m-1").pid
    runtime.calls.clear()

    fresh = Reconciler(runtime, images, tmp_path / "agent", health=HealthMonitor())
    assert fresh.reconcile([one], time.time()) == []
    assert runtime.calls == []
    assert runtime.state("m-1").pid == pid
    # ...and checks it again, so the edge can put it back in rotation.
    assert fresh.health.watching("m-1")
    assert fresh.describe("m-1")["version"] == 1


def test_describe_merges_what_the_host_remembers_and_observes(
    reconciler: Reconciler, runtime: FakeRuntime, layout: Path
) -> None:
    reconciler.reconcile([want(layout, address=ADDRESS, checks=[CHECK])], time.time())
    info = reconciler.describe("m-1")
    assert info["app"] == "clinic"
    assert (info["version"], info["generation"], info["restarts"], info["failed"]) == (
        1,
        0,
        [],
        False,
    )
    assert info["status"] == "running" and info["pid"] == runtime.state("m-1").pid
    assert info["exit_code"] is None and info["started"] is True
    assert info["healthy"] is None and info["checks"] == []  # no check has run yet
    assert reconciler.describe("m-unknown")["status"] == "absent"
