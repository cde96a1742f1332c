"""What a machine can see of its host and its neighbours, tried from inside.

An attacker's program in a machine calls the kernel interfaces the seccomp
allowlist leaves out, lists the network interfaces in ``/sys``, and looks for
other machines' cgroups under ``/sys/fs/cgroup`` and writes to its own.
"""

from __future__ import annotations

import errno
import ipaddress
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hangar.agent.runtimes.base import MachineSpec
from hangar.agent.runtimes.runc import RuncRuntime
from hangar.images.oci import ImageRef, build_layout, layer_tar
from hangar.images.store import Image, ImageStore
from hangar.net import netns
from tests.integration.conftest import BASE_UID, busybox_layer, needs_root, wait_for

pytestmark = [
    pytest.mark.slow,
    needs_root,
    pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc (`make deps`)"),
]
PROBE_SOURCE = Path(__file__).resolve().parents[1] / "data" / "syscall_probe.c"
# Refused by the filter: each answers something other than EPERM on the host
# (see test_the_probe_tells_the_filter_from_the_kernel).
REFUSED = [
    "io_uring_setup", "io_uring_enter", "io_uring_register", "perf_event_open", "bpf",
    "add_key", "keyctl", "request_key", "setns", "mount", "ptrace", "get_mempolicy",
    "clone_newuser", "unshare", "socket_vsock",
]  # fmt: skip
# Refused by the kernel too (no CAP_SYS_BOOT, no unprivileged userfaultfd), so
# they show nothing about the filter alone, but an attacker would try them.
ALSO_REFUSED = ["userfaultfd", "kexec_load", "kexec_file_load"]
EXTRA_APPLETS = ["find", "mkdir", "readlink", "sort"]


def _mib(n: int) -> int:
    return n << 20


@pytest.fixture(scope="session")
def probe_image(base_dir: Path) -> Image:
    """The busybox image plus ``/bin/probe``, a static build of syscall_probe.c."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("needs gcc to build the syscall probe (Debian: gcc, libc6-dev)")
    binary = base_dir / "syscall-probe"
    built = subprocess.run(
        [gcc, "-static", "-O2", "-o", str(binary), str(PROBE_SOURCE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if built.returncode != 0:
        pytest.skip(f"cannot build a static probe (Debian: libc6-dev): {built.stderr[-300:]}")
    entries: list[object] = []
    probe = tarfile.TarInfo("bin/probe")
    probe.mode = 0o755
    entries.append((probe, binary.read_bytes()))
    for applet in EXTRA_APPLETS:
        link = tarfile.TarInfo(f"bin/{applet}")
        link.type, link.linkname = tarfile.SYMTYPE, "busybox"
        entries.append(link)
    layout = base_dir / "probe-layout"
    build_layout(layout, [busybox_layer(), layer_tar(entries)])  # type: ignore[arg-type]
    return ImageStore(base_dir / "images", uid_base=BASE_UID).pull(ImageRef("oci", path=layout))


@pytest.fixture
def started(runtime: RuncRuntime) -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    for machine_id in ids:
        runtime.remove(machine_id)


def _start(
    runtime: RuncRuntime, started: list[str], image: Image, machine_id: str, **kw: object
) -> None:
    started.append(machine_id)
    runtime.start(MachineSpec(id=machine_id, rootfs=image.rootfs, args=["/bin/sleep", "300"], **kw))  # type: ignore[arg-type]
    wait_for(lambda: runtime.state(machine_id).status == "running")


def _inside(runtime: RuncRuntime, machine_id: str, script: str) -> str:
    result = runtime.exec(machine_id, ["/bin/sh", "-c", script])
    assert result.exit_code == 0, result.stderr.decode()
    return result.stdout.decode()


def _probe_results(text: str) -> dict[str, int]:
    results = {}
    for line in text.splitlines():
        name, value = line.split()
        assert value != "unknown", f"the probe does not know {name}"
        results[name] = int(value)
    return results


def test_the_probe_tells_the_filter_from_the_kernel(probe_image: Image) -> None:
    """On the host, outside any filter, none of REFUSED answers EPERM: so an
    EPERM inside a machine is the filter's doing, not the kernel's."""
    status = Path("/proc/self/status").read_text()
    if "Seccomp:\t0" not in status:
        pytest.skip("the tests themselves run under a seccomp filter: no unfiltered control")
    # Read from the unpacked image, and never the kexec calls: this runs as root.
    probe = probe_image.rootfs / "bin" / "probe"
    host = subprocess.run([str(probe), *REFUSED], capture_output=True, text=True, timeout=30)
    results = _probe_results(host.stdout)
    assert {k for k, v in results.items() if v == errno.EPERM} == set(), results


def test_an_attackers_kernel_calls_are_refused_with_eperm(
    runtime: RuncRuntime, probe_image: Image, started: list[str]
) -> None:
    _start(runtime, started, probe_image, "m-sc")
    calls = ["getpid", "fork", "socket_inet", "clone3", *REFUSED, *ALSO_REFUSED]
    results = _probe_results(_inside(runtime, "m-sc", "/bin/probe " + " ".join(calls)))
    # What every program needs still works.
    assert results["getpid"] == 0 and results["fork"] == 0 and results["socket_inet"] == 0
    # clone3's flags cannot be filtered: ENOSYS, so C libraries fall back to clone.
    assert results["clone3"] == errno.ENOSYS
    refused = {name: results[name] for name in [*REFUSED, *ALSO_REFUSED]}
    assert refused == dict.fromkeys(refused, errno.EPERM)
    # The machine's own init runs under the same filter as what exec starts.
    first = _inside(runtime, "m-sc", "grep -E '^Seccomp:' /proc/1/status")
    assert first.split() == ["Seccomp:", "2"]


def test_sys_class_net_lists_only_the_machines_own_interfaces(
    runtime: RuncRuntime, probe_image: Image, started: list[str]
) -> None:
    a, b = ipaddress.IPv6Address("fd42:77::a"), ipaddress.IPv6Address("fd42:77::b")
    _start(runtime, started, probe_image, "m-net-a", address=a)
    _start(runtime, started, probe_image, "m-net-b", address=b)
    _start(runtime, started, probe_image, "m-net-none")
    host = {p.name for p in Path("/sys/class/net").iterdir()}
    # The host has both machines' veths (and whatever else it carries).
    assert {netns.host_interface("m-net-a"), netns.host_interface("m-net-b")} <= host
    for machine, expected in (("m-net-a", {"lo", "eth0"}), ("m-net-none", {"lo"})):
        for directory in ("/sys/class/net", "/sys/devices/virtual/net"):
            seen = set(_inside(runtime, machine, f"ls {directory}").split())
            assert seen == expected, (machine, directory, seen)
    # Nothing under /sys names the host's side of any machine's link.
    found = _inside(runtime, "m-net-a", "find /sys -name 'hv*' 2>/dev/null | head -5; true")
    assert found.strip() == ""
    # The one it lists is its own: the address on eth0 is its own address.
    mac = _inside(runtime, "m-net-a", "cat /sys/class/net/eth0/address").strip()
    pid = runtime.state("m-net-a").pid
    # Asked over netlink from the host: nsenter -n would keep the host's /sys.
    link = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "ip", "-o", "link", "show", "eth0"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert mac and mac in link.stdout, (mac, link.stdout)


def test_only_its_own_cgroup_and_read_only(
    runtime: RuncRuntime, probe_image: Image, started: list[str]
) -> None:
    _start(runtime, started, probe_image, "m-cg-a", memory_mb=64)
    _start(runtime, started, probe_image, "m-cg-b", memory_mb=96)
    host_limit = next(
        Path("/sys/fs/cgroup").glob("memory/hangar/m-cg-a/memory.limit_in_bytes"), None
    )
    listing = _inside(runtime, "m-cg-a", "find /sys/fs/cgroup | sort")
    assert listing.strip(), "the machine sees no cgroup files at all"
    assert "m-cg-b" not in listing and "hangar" not in listing and "m-cg-a" not in listing
    # Its own cgroup is the root it sees; no other directory is there.
    assert all(
        line.endswith(":/") for line in _inside(runtime, "m-cg-a", "cat /proc/self/cgroup").split()
    )
    subdirs = _inside(runtime, "m-cg-a", "find /sys/fs/cgroup -mindepth 2 -type d").split()
    assert subdirs == [], subdirs
    if host_limit is not None:  # cgroup v1: the memory hierarchy shows its own limit
        own = _inside(runtime, "m-cg-a", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes")
        assert int(own) == _mib(64)
    # Writing anywhere under it fails, and changes nothing on the host.
    attempts = _inside(
        runtime,
        "m-cg-a",
        "; ".join(
            [
                "for f in $(find /sys/fs/cgroup -name '*limit_in_bytes' -o -name memory.max"
                " -o -name pids.max -o -name cgroup.procs -o -name cpu.cfs_quota_us); do"
                " echo 1 2>/dev/null > $f && echo WROTE $f; done",
                "touch /sys/fs/cgroup/x 2>/dev/null && echo WROTE-ROOT",
                "for d in /sys/fs/cgroup/*; do mkdir $d/escape 2>/dev/null && echo MADE $d; done",
                "echo done",
            ]
        ),
    )
    assert attempts.split() == ["done"], attempts
    if host_limit is not None:
        assert int(host_limit.read_text()) == _mib(64)
