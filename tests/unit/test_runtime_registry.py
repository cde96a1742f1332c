"""Machine drivers by name, and the fake driver keeping to the Runtime protocol."""

from __future__ import annotations

from pathlib import Path

import pytest

from hangar.agent.runtimes import registry
from hangar.agent.runtimes.base import ExecResult, MachineSpec
from hangar.agent.runtimes.fake import Call, FakeRuntime
from hangar.errors import CommandError, ConfigError, Conflict, NotFound


def test_runc_is_known_and_builds_over_the_agents_directories() -> None:
    from hangar.agent.runtimes.runc import RuncRuntime

    assert "runc" in registry.names()
    assert registry.get("runc") is RuncRuntime


def test_an_unknown_runtime_names_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        registry.get("firecracker")
    assert "'firecracker'" in caught.value.message
    assert "runc" in caught.value.message


def test_a_name_cannot_be_taken_twice() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("runc")(FakeRuntime)


def test_the_fake_is_registered_once_imported(tmp_path: Path) -> None:
    assert "fake" in registry.names()
    runtime = registry.create("fake", tmp_path / "state", tmp_path / "bundles")
    assert isinstance(runtime, FakeRuntime) and runtime.name == "fake"


def spec(machine_id: str = "m-1") -> MachineSpec:
    return MachineSpec(id=machine_id, rootfs=Path("/images/x/rootfs"), args=["/app"])


def test_fake_lifecycle(tmp_path: Path) -> None:
    runtime = FakeRuntime(tmp_path / "state", tmp_path / "bundles")
    assert runtime.state("m-1").status == "absent"
    assert runtime.start(spec()).status == "running"
    with pytest.raises(Conflict):
        runtime.start(spec())
    with pytest.raises(Conflict):
        runtime.restart(spec())
    runtime.emit("m-1", "stdout", "hello")
    assert [r["line"] for r in runtime.logs("m-1")] == ["hello"]
    assert runtime.log_path("m-1").exists()

    runtime.exec_results["m-1"] = ExecResult(3, b"out", b"err")
    assert runtime.exec("m-1", ["/bin/true"]) == ExecResult(3, b"out", b"err")

    runtime.stop_exit_code["m-1"] = 0
    stopped = runtime.stop("m-1", signal="SIGINT", timeout=2)
    assert (stopped.status, stopped.exit_code) == ("stopped", 0)
    assert stopped.finished_at is not None
    with pytest.raises(Conflict):
        runtime.exec("m-1", ["/bin/true"])
    assert runtime.restart(spec()).status == "running"

    runtime.remove("m-1")
    assert runtime.list() == [] and not runtime.log_path("m-1").parent.exists()
    with pytest.raises(NotFound):
        runtime.logs("m-1")
    assert [c.method for c in runtime.calls] == [
        "start", "start", "restart", "exec", "stop", "exec", "restart", "remove",
    ]  # fmt: skip
    assert runtime.called("stop") == [Call("stop", "m-1", (("signal", "SIGINT"), ("timeout", 2)))]


def test_fake_failures(tmp_path: Path) -> None:
    runtime = FakeRuntime(tmp_path / "state", tmp_path / "bundles")
    runtime.fail_start["m-1"] = "boom"
    with pytest.raises(CommandError, match="boom"):
        runtime.start(spec())
    assert runtime.state("m-1").status == "absent"
    runtime.start(spec())  # a failure is for one start only
    runtime.fail_stop["m-1"] = "stuck"
    with pytest.raises(CommandError, match="stuck"):
        runtime.stop("m-1")
    assert runtime.state("m-1").status == "running"
    runtime.exit("m-1", 137)
    assert runtime.state("m-1").exit_code == 137
