"""Fixtures for tests that run real machines (root and runc required)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hangar.agent.runtimes.base import MachineSpec
from hangar.agent.runtimes.runc import RuncRuntime
from hangar.images.oci import ImageRef, build_layout, layer_tar
from hangar.images.store import Image, ImageStore

APPLETS = [
    "sh",
    "id",
    "cat",
    "echo",
    "ls",
    "sleep",
    "mount",
    "touch",
    "unshare",
    "ps",
    "head",
    "tr",
    "grep",
    "true",
    "wc",
    "dd",
    "df",
    "stat",
    "sync",
]
BASE_UID = 100000
ROOT = Path(__file__).resolve().parents[2]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="runc machines need root on the host")


def busybox_layer() -> bytes:
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not Path(busybox).exists():
        pytest.fail("busybox is not installed: run `make deps` (Debian package busybox-static)")
    entries: list[object] = []
    for name in ("bin", "etc", "proc", "sys", "dev", "tmp", "run", "root", "mnt"):
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        entries.append(info)
    binary = tarfile.TarInfo("bin/busybox")
    binary.mode = 0o755
    entries.append((binary, Path(busybox).read_bytes()))
    for applet in APPLETS:
        link = tarfile.TarInfo(f"bin/{applet}")
        link.type, link.linkname = tarfile.SYMTYPE, "busybox"
        entries.append(link)
    return layer_tar(entries)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def base_dir() -> Iterator[Path]:
    if shutil.which("runc") is None:
        pytest.fail("runc is not installed: run `make deps`")
    # Under /var/tmp, searchable by the machines' unprivileged uid (pytest's
    # own temporary directories are 0700).
    base = Path(tempfile.mkdtemp(prefix="hangar-runc-", dir="/var/tmp"))
    base.chmod(0o711)
    yield base
    subprocess.run(["umount", str(base / "bundles")], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def image(base_dir: Path) -> Image:
    build_layout(base_dir / "layout", [busybox_layer()])
    return ImageStore(base_dir / "images", uid_base=BASE_UID).pull(
        ImageRef("oci", path=base_dir / "layout")
    )


@pytest.fixture(scope="session")
def runtime(base_dir: Path) -> RuncRuntime:
    return RuncRuntime(base_dir / "state", base_dir / "bundles", uid_base=BASE_UID)


@pytest.fixture
def machines(runtime: RuncRuntime) -> Iterator[list[str]]:
    started: list[str] = []
    yield started
    for machine_id in started:
        runtime.remove(machine_id)


def spec(image: Image, machine_id: str, script: str, **kw: object) -> MachineSpec:
    return MachineSpec(id=machine_id, rootfs=image.rootfs, args=["/bin/sh", "-c", script], **kw)  # type: ignore[arg-type]


def leftovers(runtime: RuncRuntime, machine_id: str) -> list[str]:
    found = [
        str(p)
        for p in (
            runtime.state_dir / "machines" / machine_id,
            runtime.bundles_dir / machine_id,
            runtime.runc_root / machine_id,
        )
        if p.exists()
    ]
    found += [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/hangar/{machine_id}")]
    return found


def wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def output(runtime: RuncRuntime, machine_id: str) -> str:
    return "\n".join(r["line"] for r in runtime.logs(machine_id))


def run_to_end(runtime: RuncRuntime, machines: list[str], machine: MachineSpec) -> tuple[int, str]:
    machines.append(machine.id)
    runtime.start(machine)  # may return already stopped: the machine ran
    wait_for(lambda: runtime.state(machine.id).status == "stopped", 60)
    code = runtime.state(machine.id).exit_code
    assert code is not None
    return code, output(runtime, machine.id)


@pytest.fixture(scope="session")
def hello(base_dir: Path) -> Image:
    spec = importlib.util.spec_from_file_location("hello_build", ROOT / "examples/hello/build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(base_dir / "hello")
    return ImageStore(base_dir / "images", uid_base=BASE_UID).pull(
        ImageRef("oci", path=base_dir / "hello", tag="latest")
    )
