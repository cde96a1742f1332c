"""Machines under real runc, attacked from inside as a tenant would."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hangar.agent.runtimes.base import MachineSpec
from hangar.agent.runtimes.ociconfig import CAPABILITIES, INIT_PATH
from hangar.agent.runtimes.runc import RuncRuntime
from hangar.errors import CommandError, ConfigError, Conflict, ValidationError, WaitTimeout
from hangar.images.store import Image
from tests.integration.conftest import (
    BASE_UID,
    leftovers,
    needs_root,
    output,
    run_to_end,
    spec,
    wait_for,
)

pytestmark = [pytest.mark.slow, needs_root]
_CAP_BITS = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_NET_BIND_SERVICE": 10,
}


def test_bundles_live_on_a_private_tmpfs(runtime: RuncRuntime) -> None:
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    line = next(m for m in mounts if m.split()[1] == str(runtime.bundles_dir))
    assert line.split()[2] == "tmpfs"
    assert "mode=700" in line or "mode=711" in line
    assert "noexec" in line


def test_runs_captures_output_and_reports_exit(
    runtime: RuncRuntime, image: Image, machines: list[str]
) -> None:
    code, out = run_to_end(
        runtime, machines, spec(image, "m-out", "echo hello; echo oops >&2; exit 3")
    )
    assert code == 3
    records = runtime.logs("m-out")
    # stdout and stderr are separate pipes: their lines may interleave either way.
    assert any(r["stream"] == "stdout" and r["line"] == "hello" for r in records)
    assert any(r["stream"] == "stderr" and r["line"] == "oops" for r in records)
    assert len(records) == 2
    assert all("ts" in r for r in records)
    assert out.count("hello") == 1


def test_isolation_from_inside(runtime: RuncRuntime, image: Image, machines: list[str]) -> None:
    script = "; ".join(
        [
            "mount -t tmpfs x /mnt && echo MOUNTED || echo mount=denied",
            "touch /owned && echo WROTE-ROOT || echo rootfs=readonly",
            "echo 1 > /proc/sys/kernel/domainname && echo WROTE-PROCSYS || echo procsys=readonly",
            "unshare -U true && echo NEW-USERNS || echo userns=denied",
            "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status",
            "echo masked=$(grep -cE ' /proc/(keys|timer_list|acpi) ' /proc/self/mountinfo)",
            "touch /tmp/ok && echo tmp=writable",
            "echo uid=$(id -u)",
        ]
    )
    code, out = run_to_end(runtime, machines, spec(image, "m-iso", script))
    assert code == 0, out
    for expected in (
        "mount=denied",
        "rootfs=readonly",
        "procsys=readonly",
        "userns=denied",
        "tmp=writable",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ):
        assert expected in out, out
    for forbidden in ("MOUNTED", "WROTE-ROOT", "WROTE-PROCSYS", "NEW-USERNS"):
        assert forbidden not in out
    cap_eff = int(
        next(line for line in out.splitlines() if line.startswith("CapEff")).split()[1], 16
    )
    assert cap_eff == sum(1 << _CAP_BITS[c] for c in CAPABILITIES)
    assert "uid=0" in out  # root inside (and host uid 100000 outside: the next test)
    assert "masked=3" in out  # /proc/keys, /proc/timer_list, /proc/acpi covered


def test_root_inside_is_unprivileged_outside(
    runtime: RuncRuntime, image: Image, machines: list[str]
) -> None:
    machines.append("m-uid")
    state = runtime.start(spec(image, "m-uid", "sleep 60"))
    assert state.pid is not None
    status = Path(f"/proc/{state.pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(BASE_UID)] * 4
    uid_map = Path(f"/proc/{state.pid}/uid_map").read_text().split()
    assert uid_map == ["0", str(BASE_UID), "65536"]


def test_fork_bomb_stops_at_the_pids_limit(
    runtime: RuncRuntime, image: Image, machines: list[str]
) -> None:
    machines.append("m-bomb")
    runtime.start(spec(image, "m-bomb", "bomb() { bomb | bomb & }; bomb; sleep 60", pids_limit=40))
    pids = next(Path("/sys/fs/cgroup/pids").glob("hangar/m-bomb"))
    wait_for(lambda: int((pids / "pids.max").read_text()) == 40)
    time.sleep(2)
    assert int((pids / "pids.current").read_text()) <= 40
    assert int((pids / "pids.events").read_text().split()[1]) > 0  # forks were refused
    assert subprocess.run(["true"]).returncode == 0  # the host still forks
    final = runtime.stop("m-bomb", signal="SIGKILL", timeout=5)
    assert final.status == "stopped"


def test_memory_over_the_limit_kills_the_machine(
    runtime: RuncRuntime, image: Image, machines: list[str]
) -> None:
    code, _ = run_to_end(
        runtime,
        machines,
        spec(
            image,
            "m-oom",
            "x=$(head -c 300000000 /dev/zero | tr '\\0' x); echo survived",
            memory_mb=64,
        ),
    )
    assert code == 137  # SIGKILL from the OOM killer


def test_machines_cannot_see_each_other(
    runtime: RuncRuntime, image: Image, machines: list[str]
) -> None:
    machines += ["m-a", "m-b"]
    runtime.start(spec(image, "m-a", "echo secret > /tmp/a-secret; sleep 60"))
    runtime.start(spec(image, "m-b", "sleep 60"))
    wait_for(lambda: runtime.exec("m-a", ["cat", "/tmp/a-secret"]).stdout == b"secret\n")
    ps = runtime.exec("m-b", ["ps"]).stdout.decode()
    assert "sleep 60" in ps and "a-secret" not in ps
    procs = [line for line in ps.splitlines()[1:] if line.strip()]
    assert len(procs) == 3  # the init, sleep and ps: nothing of m-a's
    assert procs[0].split()[0] == "1" and INIT_PATH in procs[0]
    peek = runtime.exec("m-b", ["cat", "/tmp/a-secret"])
    assert peek.exit_code != 0


def test_stop_sends_the_signal_then_kills(
    runtime: RuncRuntime, image: Image, machines: list[str]
) -> None:
    machines += ["m-term", "m-stubborn"]
    runtime.start(spec(image, "m-term", "trap 'echo got-term; exit 0' TERM; sleep 60 & wait"))
    stopped = runtime.stop("m-term", signal="SIGTERM", timeout=10)
    assert stopped.exit_code == 0 and "got-term" in output(runtime, "m-term")
    runtime.start(spec(image, "m-stubborn", "trap '' TERM; sleep 60"))
    started = time.monotonic()
    stopped = runtime.stop("m-stubborn", signal="SIGTERM", timeout=1)
    assert stopped.exit_code == 137 and time.monotonic() - started < 15


def test_the_init_is_pid_1_and_forwards_the_kill_signal(
    runtime: RuncRuntime, image: Image, machines: list[str]
) -> None:
    """A program with no handler for the kill signal stops on it at once: it is not PID 1."""
    for signal, number in (("SIGTERM", 15), ("SIGINT", 2), ("SIGUSR1", 10)):
        machine_id = f"m-sig{number}"
        machines.append(machine_id)
        # exec: sleep itself is the app, installing no handler at all.
        runtime.start(spec(image, machine_id, "exec sleep 60"))
        pid1 = runtime.exec(machine_id, ["cat", "/proc/1/cmdline"]).stdout.split(b"\0")
        assert pid1[:4] == [INIT_PATH.encode(), b"--", b"/bin/sh", b"-c"]
        started = time.monotonic()
        stopped = runtime.stop(machine_id, signal=signal, timeout=30)
        # The app's own status: killed by the signal it was sent, not SIGKILL.
        assert stopped.status == "stopped" and stopped.exit_code == 128 + number
        assert time.monotonic() - started < 30  # never reached the kill timeout


def test_the_init_reaps_orphans_and_runs_as_the_machines_user(
    runtime: RuncRuntime, image: Image, machines: list[str]
) -> None:
    machines.append("m-reap")
    # Orphans: children of a shell that exits at once, reparented to PID 1.
    script = "for i in 1 2 3 4 5; do sh -c 'sleep 0.2 &'; done; exec sleep 60"
    runtime.start(spec(image, "m-reap", script, uid=1000, gid=1000))

    def states() -> list[str]:
        out = runtime.exec("m-reap", ["cat", "/proc/1/status"]).stdout.decode()
        assert "Uid:\t1000" in out  # the init runs as the machine's user
        ps = runtime.exec("m-reap", ["ps", "-o", "stat,args"]).stdout.decode()
        return [line.split()[0] for line in ps.splitlines()[1:] if line.strip()]

    time.sleep(1)  # the orphans have exited by now
    wait_for(lambda: "Z" not in "".join(states()))
    ps = runtime.exec("m-reap", ["ps", "-o", "user,args"]).stdout.decode()
    app = next(line for line in ps.splitlines() if "sleep 60" in line)
    assert app.split()[0] == "1000"  # the app runs as the image's user too


def test_a_missing_init_is_a_clear_error(tmp_path: Path, image: Image, base_dir: Path) -> None:
    broken = RuncRuntime(
        base_dir / "state-noinit", base_dir / "bundles-noinit", uid_base=BASE_UID,
        mount_tmpfs=False, init=tmp_path / "no-tini",
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"init .* is missing"):
        broken.start(spec(image, "m-noinit", "true"))
    assert broken.list() == []


def test_bad_input_creates_nothing(runtime: RuncRuntime, image: Image) -> None:
    with pytest.raises(ValidationError, match="below the minimum"):
        runtime.start(spec(image, "m-small", "true", memory_mb=8))
    assert leftovers(runtime, "m-small") == []
    with pytest.raises(ValidationError, match="no command"):
        runtime.start(MachineSpec(id="m-nocmd", rootfs=image.rootfs, args=[]))
    assert leftovers(runtime, "m-nocmd") == []
    with pytest.raises(CommandError) as info:
        runtime.start(MachineSpec(id="m-missing", rootfs=image.rootfs, args=["/bin/nope"]))
    assert "nope" in str(info.value)
    runtime.remove("m-missing")
    assert leftovers(runtime, "m-missing") == []
    with pytest.raises(ValidationError):
        runtime.start(MachineSpec(id="../escape", rootfs=image.rootfs, args=["true"]))


def test_exec_on_a_stopped_machine_is_refused(
    runtime: RuncRuntime, image: Image, machines: list[str]
) -> None:
    run_to_end(runtime, machines, spec(image, "m-done", "true"))
    with pytest.raises(Conflict, match="not running"):
        runtime.exec("m-done", ["true"])


def test_exec_errors_name_the_program_never_its_arguments(
    runtime: RuncRuntime, image: Image, machines: list[str]
) -> None:
    """A timed-out exec ends up in the server's log: its password argument must not."""
    machines.append("m-exec-args")
    runtime.start(spec(image, "m-exec-args", "sleep 60"))
    canary = "pw-" + "Canary-91be"
    with pytest.raises(WaitTimeout) as caught:
        runtime.exec("m-exec-args", ["sh", "-c", f"sleep 30 # {canary}"], timeout=0.5)
    error = caught.value
    assert "sh (2 argument(s))" in error.message
    assert canary not in f"{error.message} {error.hint} {error!r}"
    assert error.__cause__ is None and error.__suppress_context__


def test_a_restarted_agent_adopts_running_machines(
    runtime: RuncRuntime, image: Image, base_dir: Path, machines: list[str]
) -> None:
    """Start a machine from a process that then dies, as a killed agent would."""
    machines.append("m-adopt")
    starter = f"""
import sys
from pathlib import Path
from hangar.agent.runtimes.base import MachineSpec
from hangar.agent.runtimes.runc import RuncRuntime
rt = RuncRuntime(Path({str(base_dir / "state")!r}), Path({str(base_dir / "bundles")!r}),
                 uid_base={BASE_UID})
rt.start(MachineSpec(id="m-adopt", rootfs=Path({str(image.rootfs)!r}),
         args=["/bin/sh", "-c", "while true; do echo tick; sleep 0.2; done"]))
"""
    subprocess.run([sys.executable, "-c", starter], check=True, timeout=60)
    adopted = RuncRuntime(base_dir / "state", base_dir / "bundles", uid_base=BASE_UID)
    assert "m-adopt" in adopted.list()
    assert adopted.state("m-adopt").status == "running"
    before = len(adopted.logs("m-adopt"))
    wait_for(lambda: len(adopted.logs("m-adopt")) > before + 2)  # output still captured
    assert adopted.stop("m-adopt", timeout=5).status == "stopped"
    handle = json.loads((base_dir / "state/machines/m-adopt/handle.json").read_text())
    assert handle["version"] == 1 and handle["runtime"] == "runc"
