"""Encrypted volumes under real runc machines, gocryptfs (and LUKS2 where the kernel has
device-mapper), attacked as a tenant or a thief of the disk would."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hangar.agent.runtimes.runc import RuncRuntime
from hangar.agent.volumes import _mounts
from hangar.agent.volumes.base import VolumeLayout, VolumeSpec
from hangar.agent.volumes.manager import VolumeManager
from hangar.contract.assignments import Assignment
from hangar.contract.volumes import HostVolume, VolumeMount
from hangar.errors import CommandError, PermissionDenied
from hangar.images.store import Image
from tests.integration.conftest import BASE_UID, needs_root, run_to_end, spec

pytestmark = [pytest.mark.slow, needs_root]

needs_fuse = pytest.mark.skipif(
    shutil.which("gocryptfs") is None or not Path("/dev/fuse").exists(),
    reason="gocryptfs and /dev/fuse are needed",
)
needs_dm = pytest.mark.skipif(
    not Path("/dev/mapper/control").exists(),
    reason="the kernel has no device-mapper (/dev/mapper/control): LUKS2 cannot run here",
)


@pytest.fixture
def layout(runtime: RuncRuntime) -> Iterator[VolumeLayout]:
    base = runtime.state_dir.parent / f"vol-{secrets.token_hex(4)}"
    layout = VolumeLayout(base / "volumes", runtime.bundles_dir / f".volumes-{base.name}")
    yield layout
    for _, point, _ in _mounts.mounts_under(layout.run_dir):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)
    shutil.rmtree(layout.run_dir, ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(
    params=[pytest.param("gocryptfs", marks=needs_fuse), pytest.param("luks2", marks=needs_dm)]
)
def manager(request: pytest.FixtureRequest, layout: VolumeLayout) -> VolumeManager:
    return VolumeManager(layout, request.param)


def _key(manager: VolumeManager) -> bytes:
    return secrets.token_bytes(64 if manager.backend == "luks2" else 32)


def _want(machine_id: str, volume_id: str, manager: VolumeManager, size_mb: int = 64) -> Assignment:
    mount = VolumeMount(volume_id, "data", "/data", size_mb, manager.backend)  # type: ignore[arg-type]
    return Assignment(machine_id, "app", 1, "started", "img", mounts=[mount])


def _vid() -> str:
    return f"vol_{secrets.token_hex(8)}"


def _mount(
    manager: VolumeManager, machine_id: str, vid: str, key: bytes, size_mb: int = 64
) -> dict[str, Path]:
    return manager.mount_for(_want(machine_id, vid, manager, size_mb), {vid: key}, owner=BASE_UID)


def _files_containing(root: Path, needle: bytes) -> list[str]:
    """Regular files under ``root`` (not crossing into mounts) whose bytes hold ``needle``."""
    found = []
    root_dev = os.stat(root).st_dev
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.lstat(Path(directory) / d).st_dev == root_dev]
        for name in files:
            path = Path(directory) / name
            if not path.is_file() or path.is_symlink():
                continue
            with open(path, "rb") as f:
                tail = b""
                while chunk := f.read(1 << 20):
                    if needle in tail + chunk:
                        found.append(str(path))
                        break
                    tail = chunk[-len(needle) :]
    return found


def test_a_canary_written_in_a_machine_is_ciphertext_on_the_host_disk(
    runtime: RuncRuntime, image: Image, machines: list[str], manager: VolumeManager
) -> None:
    vid, key = _vid(), _key(manager)
    canary = f"CANARY-{secrets.token_hex(12)}"
    volumes = _mount(manager, "m-vol-canary", vid, key)
    script = (
        f"echo {canary} > /data/canary.txt && mkdir /data/{canary} && sync"
        " && ls -ln / | grep ' data' && cat /data/canary.txt"
    )
    code, out = run_to_end(runtime, machines, spec(image, "m-vol-canary", script, volumes=volumes))
    assert code == 0, out
    assert canary in out  # the machine wrote it and reads it back
    # The machine's root (uid 0 inside) owns the volume: an ordinary directory to it.
    data_line = next(line for line in out.splitlines() if line.endswith(" data"))
    assert data_line.split()[2] == "0"
    runtime.remove("m-vol-canary")
    machines.remove("m-vol-canary")
    manager.release([vid])
    assert not manager.driver.mounted(vid)
    needle = canary.encode()
    # Nowhere on disk: not in the volume file, not in any file beside it.
    assert manager.layout.backing(vid).stat().st_size > 0
    assert _files_containing(manager.layout.volumes_dir, needle) == []
    assert _files_containing(runtime.state_dir, needle) == []
    # And it is really there, for whoever holds the key.
    plain = _mount(manager, "m-vol-canary-2", vid, key)["/data"]
    assert (plain / "canary.txt").read_text().strip() == canary
    # The key itself is on no file, no command line, no environment of what serves it.
    for form in (key, key.hex().encode(), key.hex().upper().encode()):
        assert _files_containing(manager.layout.volumes_dir, form) == []
        for pid in _mounts.daemons_serving(plain):
            for what in ("cmdline", "environ"):
                assert form not in Path(f"/proc/{pid}/{what}").read_bytes()
    manager.release([vid])
    manager.driver.destroy(vid)


def test_a_wrong_key_reads_nothing_and_a_destroyed_volume_leaves_no_file(
    manager: VolumeManager, tmp_path: Path
) -> None:
    vid, key = _vid(), _key(manager)
    plain = _mount(manager, "m-x", vid, key)["/data"]
    (plain / "secret.txt").write_text("PHI-RECORD-4711")
    manager.release([vid])
    stolen = tmp_path / "stolen.img"
    shutil.copyfile(manager.layout.backing(vid), stolen)
    manager.driver.destroy(vid)
    assert not manager.layout.dir(vid).exists()
    assert not manager.layout.mount_dir(vid).exists()
    # The thief puts the copy back and tries another key (the real one is gone).
    manager.layout.dir(vid).mkdir(parents=True)
    shutil.copyfile(stolen, manager.layout.backing(vid))
    try:
        plain = _mount(manager, "m-x", vid, _key(manager))["/data"]
    except CommandError as exc:
        assert manager.backend == "luks2", exc  # LUKS2 refuses the key outright
    else:
        readable = []
        for path in plain.rglob("*"):
            try:
                readable.append(path.read_bytes())
            except OSError:
                continue
        assert not any(b"PHI-RECORD-4711" in r for r in readable)
    finally:
        manager.driver.destroy(vid)
    assert b"PHI-RECORD-4711" not in stolen.read_bytes()


def test_a_full_volume_gives_enospc_and_others_keep_working(
    runtime: RuncRuntime, image: Image, machines: list[str], manager: VolumeManager
) -> None:
    small, other = _vid(), _vid()
    key_small, key_other = _key(manager), _key(manager)
    volumes = _mount(manager, "m-vol-full", small, key_small)
    code, out = run_to_end(
        runtime,
        machines,
        spec(
            image,
            "m-vol-full",
            "dd if=/dev/zero of=/data/fill bs=1M count=200 2>&1; echo dd=$?; "
            "echo still > /tmp/ok && cat /tmp/ok",
            volumes=volumes,
        ),
    )
    assert "No space left on device" in out, out
    assert "dd=1" in out and "still" in out  # the machine itself goes on
    # The host's own disk was not filled: the file is the volume's size at most.
    assert manager.layout.backing(small).stat().st_blocks * 512 <= 64 * _mounts.MB
    # Another machine's volume on the same host still takes writes.
    code, out = run_to_end(
        runtime,
        machines,
        spec(
            image,
            "m-vol-other",
            "dd if=/dev/zero of=/data/ok bs=1M count=8 2>&1 && echo wrote",
            volumes=_mount(manager, "m-vol-other", other, key_other),
        ),
    )
    assert code == 0 and "wrote" in out, out
    for machine_id in ("m-vol-full", "m-vol-other"):
        runtime.remove(machine_id)
        machines.remove(machine_id)
    manager.release([small, other])
    manager.driver.destroy(small)
    manager.driver.destroy(other)


def test_data_survives_a_new_machine_on_the_same_volume(
    runtime: RuncRuntime, image: Image, machines: list[str], manager: VolumeManager
) -> None:
    vid, key = _vid(), _key(manager)
    first = _mount(manager, "m-vol-v1", vid, key)
    code, out = run_to_end(
        runtime, machines, spec(image, "m-vol-v1", "echo kept > /data/state", volumes=first)
    )
    assert code == 0, out
    runtime.remove("m-vol-v1")
    machines.remove("m-vol-v1")
    manager.release([vid])
    again = _mount(manager, "m-vol-v2", vid, key)
    code, out = run_to_end(
        runtime, machines, spec(image, "m-vol-v2", "cat /data/state", volumes=again)
    )
    assert code == 0 and "kept" in out, out
    runtime.remove("m-vol-v2")
    machines.remove("m-vol-v2")
    manager.release([vid])
    manager.driver.destroy(vid)


def test_extend_grows_in_use_or_at_the_next_mount(manager: VolumeManager) -> None:
    vid, key = _vid(), _key(manager)
    plain = _mount(manager, "m-ext", vid, key)["/data"]
    (plain / "before").write_text("x")
    before = shutil.disk_usage(plain).total
    online = manager.driver.extend(VolumeSpec(vid, 192, manager.backend), None)
    assert online == manager.online_resize
    if not online:
        assert shutil.disk_usage(plain).total == before  # said so: not grown yet
        manager.release([vid])
        plain = _mount(manager, "m-ext", vid, key, size_mb=192)["/data"]
    assert shutil.disk_usage(plain).total > before + 100 * _mounts.MB
    assert (plain / "before").read_text() == "x"
    manager.release([vid])
    manager.driver.destroy(vid)


@needs_fuse
def test_a_killed_gocryptfs_daemon_is_cleaned_up_and_remounted(layout: VolumeLayout) -> None:
    manager = VolumeManager(layout, "gocryptfs")
    vid, key = _vid(), secrets.token_bytes(32)
    plain = _mount(manager, "m-stale", vid, key)["/data"]
    (plain / "f").write_text("survives")
    daemon = _gocryptfs_pid(plain)
    os.kill(daemon, signal.SIGKILL)
    _wait_gone(daemon)
    assert _mounts.is_stale(plain)
    # An agent starting again finds the dead mount and undoes it (and the loop mount).
    fresh = VolumeManager(layout, "gocryptfs")
    assert fresh.recover() == [vid]
    assert _mounts.mounts_under(layout.mount_dir(vid)) == []
    plain = _mount(fresh, "m-stale", vid, key)["/data"]
    assert (plain / "f").read_text() == "survives"
    # A healthy mount is adopted, not touched.
    assert VolumeManager(layout, "gocryptfs").recover() == []
    assert (plain / "f").read_text() == "survives"
    fresh.release([vid])
    fresh.driver.destroy(vid)


def test_a_machine_without_its_key_gets_no_volume(manager: VolumeManager) -> None:
    vid = _vid()
    with pytest.raises(PermissionDenied):
        manager.mount_for(_want("m-nokey", vid, manager), {}, owner=BASE_UID)
    assert not manager.layout.dir(vid).exists()


def test_sync_destroys_volumes_the_control_plane_no_longer_lists(manager: VolumeManager) -> None:
    kept, dropped = _vid(), _vid()
    for vid in (kept, dropped):
        _mount(manager, f"m-{vid}", vid, _key(manager))
    listed = [HostVolume(kept, 64, manager.backend)]  # type: ignore[arg-type]
    # A volume still held by a machine here is never destroyed under it.
    assert manager.sync(listed, in_use={dropped, kept}) != []
    assert manager.layout.dir(dropped).exists()
    assert manager.sync(listed, in_use={kept}) == []
    assert not manager.layout.dir(dropped).exists()
    assert manager.driver.mounted(kept)
    # Listed, but no machine here holds it any more: unmounted, kept.
    assert manager.sync(listed, in_use=set()) == []
    assert not manager.driver.mounted(kept) and manager.layout.backing(kept).exists()
    manager.driver.destroy(kept)


def _gocryptfs_pid(plain: Path) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"gocryptfs") and str(plain).encode() in argv:
            return int(entry.name)
    raise AssertionError("no gocryptfs daemon serves the volume")


def _wait_gone(pid: int) -> None:
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not exit")


def test_backend_registry_names_why_luks_cannot_run_here() -> None:
    from hangar.agent.volumes.registry import get

    why = get("luks2").unavailable()
    if Path("/dev/mapper/control").exists():
        pytest.skip("this host has device-mapper")
    assert why is not None and "device-mapper" in why


@needs_fuse
def test_server_stop_unmounts_volumes_and_keeps_their_files(tmp_path: Path) -> None:
    from hangar.agent.teardown import Holdings, teardown
    from hangar.hostfs import ensure_private_tmpfs

    agent_dir = Path(tempfile.mkdtemp(prefix="hangar-vol-", dir="/var/tmp"))
    try:
        ensure_private_tmpfs(agent_dir / "bundles")
        layout = VolumeLayout.for_agent(agent_dir)
        manager = VolumeManager(layout, "gocryptfs")
        vid, key = _vid(), secrets.token_bytes(32)
        plain = _mount(manager, "m-td", vid, key)["/data"]
        (plain / "kept").write_text("yes")
        done = teardown(Holdings(agent_dir, host_id=f"td{secrets.token_hex(4)}"))
        assert done.failed == [], done.failed
        assert f"volume {vid}" in done.removed
        assert _mounts.mounts_under(agent_dir) == []
        assert _gocryptfs_daemons(plain) == []
        # The ciphertext stays for the next start, and opens with the key.
        again = VolumeManager(layout, "gocryptfs")
        ensure_private_tmpfs(agent_dir / "bundles")
        assert (_mount(again, "m-td", vid, key)["/data"] / "kept").read_text() == "yes"
        again.release([vid])
    finally:
        for _, point, _ in _mounts.mounts_under(agent_dir):
            subprocess.run(["umount", "-l", str(point)], capture_output=True)
        shutil.rmtree(agent_dir, ignore_errors=True)


def _gocryptfs_daemons(plain: Path) -> list[int]:
    return _mounts.daemons_serving(plain)
