"""Volumes on a host, tried by a tenant planting things in its volume or posing as a
volume's daemon, and by an agent killed half-way through making one."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hangar import hostcmd
from hangar.agent.reconciler import Reconciler
from hangar.agent.runtimes.runc import RuncRuntime
from hangar.agent.volumes import _mounts
from hangar.agent.volumes.base import VolumeLayout, VolumeSpec
from hangar.agent.volumes.manager import VolumeManager, check_destinations
from hangar.contract.assignments import Assignment
from hangar.contract.volumes import HostVolume, VolumeMount
from hangar.errors import Conflict, ValidationError
from hangar.images.oci import ImageRef, build_layout, layer_tar
from hangar.images.store import Image, ImageStore
from tests.integration.conftest import (
    BASE_UID,
    busybox_layer,
    needs_root,
    output,
    run_to_end,
    spec,
    wait_for,
)

pytestmark = [
    pytest.mark.slow,
    needs_root,
    pytest.mark.skipif(
        shutil.which("gocryptfs") is None or not Path("/dev/fuse").exists(),
        reason="gocryptfs and /dev/fuse are needed",
    ),
]


@pytest.fixture
def layout(runtime: RuncRuntime) -> Iterator[VolumeLayout]:
    base = runtime.state_dir.parent / f"volh-{secrets.token_hex(4)}"
    layout = VolumeLayout(base / "volumes", runtime.bundles_dir / f".volumes-{base.name}")
    yield layout
    for _, point, _ in _mounts.mounts_under(layout.run_dir):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)
    shutil.rmtree(layout.run_dir, ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def manager(layout: VolumeLayout) -> VolumeManager:
    return VolumeManager(layout, "gocryptfs")


def _vid() -> str:
    return f"vol_{secrets.token_hex(8)}"


def _mount(manager: VolumeManager, vid: str, key: bytes, size_mb: int = 64) -> Path:
    mount = VolumeMount(vid, "data", "/data", size_mb, "gocryptfs")
    want = Assignment(f"m-{vid}", "app", 1, "started", "img", mounts=[mount])
    return manager.mount_for(want, {vid: key}, owner=BASE_UID)["/data"]


def test_a_machine_naming_a_volume_in_its_arguments_is_not_taken_for_its_daemon(
    manager: VolumeManager, tmp_path: Path
) -> None:
    """A tenant's process whose command line names another tenant's mount point (its
    path is predictable), even a program called gocryptfs, must not be waited for when
    that volume is unmounted: the agent would stall, and the volume would stay mounted."""
    vid, key = _vid(), secrets.token_bytes(32)
    plain = _mount(manager, vid, key)
    real = _mounts.daemons_serving(plain)
    assert len(real) == 1
    named = tmp_path / "gocryptfs"  # a program of that name, in a user namespace of its own
    shutil.copy("/bin/sh", named)
    script = ["-c", "sleep 600; exit 0", "gocryptfs", str(plain)]
    impostors = [
        subprocess.Popen(
            ["/bin/sh", *script], user=BASE_UID + 7, group=BASE_UID + 7, extra_groups=[]
        ),
        subprocess.Popen(["unshare", "--user", "--map-root-user", str(named), *script]),
    ]
    try:
        wait_for(lambda: all(_names(p.pid, plain) for p in impostors))
        assert _mounts.daemons_serving(plain) == real
        manager.release([vid])
        assert _mounts.mounts_under(manager.layout.mount_dir(vid)) == []
        assert all(p.poll() is None for p in impostors)  # untouched, and not waited for
    finally:
        for impostor in impostors:
            impostor.kill()
            impostor.wait()
    manager.driver.destroy(vid)


def _names(pid: int, plain: Path) -> bool:
    try:
        return str(plain).encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


def test_a_create_killed_before_mkfs_is_made_again(manager: VolumeManager) -> None:
    """SIGKILL between the sparse file and its file system leaves a volume.img with no
    ext4 and no handle: the next mount makes it again instead of failing for good."""
    layout, vid, key = manager.layout, _vid(), secrets.token_bytes(32)
    layout.dir(vid).mkdir(parents=True, mode=0o700)
    _mounts.make_sparse(layout.backing(vid), 64)
    (layout.dir(vid) / "snapshots").mkdir()  # only what the create left is discarded
    plain = _mount(manager, vid, key)
    assert (layout.dir(vid) / "snapshots").is_dir()
    (plain / "f").write_text("kept")
    assert os.stat(plain).st_uid == BASE_UID
    manager.release([vid])
    assert (_mount(manager, vid, key) / "f").read_text() == "kept"
    manager.release([vid])
    manager.driver.destroy(vid)


def test_a_create_killed_before_the_encrypted_tree_was_whole_is_made_again(
    manager: VolumeManager,
) -> None:
    """SIGKILL after ``cipher/`` was made but before its ``gocryptfs.diriv`` was written,
    and before the top directory was given to the machine's root."""
    layout, vid, key = manager.layout, _vid(), secrets.token_bytes(32)
    spec = VolumeSpec(vid, 64, "gocryptfs")
    layout.dir(vid).mkdir(parents=True, mode=0o700)
    _mounts.make_sparse(layout.backing(vid), 64)
    _mounts.make_ext4(str(layout.backing(vid)), vid)
    _mounts.write_handle(layout, spec)
    lower = layout.lower(vid)
    _mounts.mount_points(layout, vid, BASE_UID, lower, layout.plain(vid))
    hostcmd.run(["mount", "-t", "ext4", "-o", "loop", str(layout.backing(vid)), str(lower)])
    (lower / "cipher").mkdir(mode=0o700)
    _mounts.unmount_when_idle(lower)
    plain = _mount(manager, vid, key)
    assert os.stat(plain).st_uid == BASE_UID  # the machine's root may write its volume
    (plain / "f").write_text("kept")
    manager.release([vid])
    manager.driver.destroy(vid)


def test_a_volume_whose_handle_was_lost_keeps_its_data(manager: VolumeManager) -> None:
    layout, vid, key = manager.layout, _vid(), secrets.token_bytes(32)
    (_mount(manager, vid, key) / "f").write_text("kept")
    manager.release([vid])
    layout.handle(vid).unlink()
    assert (_mount(manager, vid, key) / "f").read_text() == "kept"
    assert layout.handle(vid).exists()
    manager.release([vid])
    manager.driver.destroy(vid)


def test_what_a_tenant_plants_in_its_volume_leads_the_host_nowhere(
    manager: VolumeManager, tmp_path: Path
) -> None:
    """Symlinks to host paths, a FIFO, a device node, a hard link, a set-uid file and a
    huge sparse file in the volume: extend, unmount, recover and destroy follow none,
    open none, and are not held up by any."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("host data")
    layout, vid, key = manager.layout, _vid(), secrets.token_bytes(32)
    plain = _mount(manager, vid, key)
    (plain / "to-host-dir").symlink_to(victim)
    (plain / "to-host-file").symlink_to(victim / "precious")
    (plain / "to-root").symlink_to("/")
    (plain / "up").symlink_to("../../../../../../..")
    os.mkfifo(plain / "fifo")
    os.mknod(plain / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (plain / "suid").write_bytes(b"#!/bin/sh\n")
    (plain / "suid").chmod(0o4755)
    os.link(plain / "suid", plain / "hardlink")
    with open(plain / "sparse", "wb") as huge:
        huge.truncate(1 << 40)  # 1 TiB of holes on a 64 MB volume
    listed = [HostVolume(vid, 128, "gocryptfs")]
    assert manager.sync(listed, in_use={vid}) == []  # grown online, or later: no error
    manager.release([vid])
    assert manager.recover() == []
    assert (_mount(manager, vid, key, 128) / "to-host-dir").is_symlink()
    manager.release([vid])
    assert manager.sync([], in_use=set()) == []  # destroyed
    assert not layout.dir(vid).exists() and not layout.mount_dir(vid).exists()
    assert (victim / "precious").read_text() == "host data"
    assert Path("/").exists() and os.listdir("/")
    assert _mounts.mounts_under(layout.run_dir) == []


def test_a_host_never_promises_more_volume_than_its_disk_holds(manager: VolumeManager) -> None:
    """Volume files are sparse: a tenant filling a volume larger than what the host's
    disk has free would fill that disk under every other tenant. Making or growing
    one past it is refused, and nothing of the refused volume is left."""
    layout = manager.layout
    layout.volumes_dir.mkdir(parents=True, exist_ok=True)
    hostcmd.run(
        ["mount", "-t", "tmpfs", "-o", "size=300m,mode=0700", "tmpfs", str(layout.volumes_dir)]
    )
    try:
        first, second, key = _vid(), _vid(), secrets.token_bytes(32)
        plain = _mount(manager, first, key, size_mb=192)
        with pytest.raises(Conflict, match="does not fit on this host"):
            _mount(manager, second, key, size_mb=192)
        assert not layout.dir(second).exists()
        _mount(manager, second, key, size_mb=64)  # what does fit is made
        # Growing in use past the disk: refused, said, and the volume keeps working.
        grown = [HostVolume(first, 512, "gocryptfs"), HostVolume(second, 64, "gocryptfs")]
        errors = manager.sync(grown, in_use={first, second})
        if manager.online_resize:
            assert len(errors) == 1 and "does not fit" in errors[0]
        (plain / "f").write_text("still here")
        manager.release([first])
        # Mounted again for its machine: at the size it has, rather than not at all.
        plain = _mount(manager, first, key, size_mb=512)
        assert (plain / "f").read_text() == "still here"
        assert shutil.disk_usage(plain).total < 256 * _mounts.MB
        assert layout.backing(first).stat().st_size == 192 * _mounts.MB
        manager.release([first, second])
        for vid in (first, second):
            manager.driver.destroy(vid)
    finally:
        for _, point, _ in _mounts.mounts_under(layout.run_dir):
            subprocess.run(["umount", "-l", str(point)], capture_output=True)
        hostcmd.run(["umount", "-l", str(layout.volumes_dir)])


@pytest.fixture
def linked_image(base_dir: Path) -> Image:
    """busybox with ``data`` a symlink out of its root, ``dev2`` one to /dev and
    ``kernel`` one into /proc: an image planting them where a volume is mounted."""
    host_dir = base_dir / "host-target"
    host_dir.mkdir(exist_ok=True)
    links = []
    for name, target in (
        ("data", "../" * 12 + str(host_dir).lstrip("/")),
        ("dev2", "/dev"),
        ("kernel", "/proc/sys/kernel"),
    ):
        link = tarfile.TarInfo(name)
        link.type, link.linkname = tarfile.SYMTYPE, target
        links.append(link)
    where = base_dir / f"layout-linked-{secrets.token_hex(3)}"
    build_layout(where, [busybox_layer(), layer_tar(links)])  # type: ignore[list-item]
    return ImageStore(base_dir / "images", uid_base=BASE_UID).pull(ImageRef("oci", path=where))


def test_a_destination_the_image_made_a_symlink_leads_no_mount_out_of_the_machine(
    runtime: RuncRuntime,
    linked_image: Image,
    machines: list[str],
    manager: VolumeManager,
    base_dir: Path,
) -> None:
    """An image's symlink at a mount's destination: to a host path, runc keeps the mount
    inside the machine's root (the host path gets nothing); to /dev (where the init
    is) or into /proc, the agent refuses before it asks for a key or mounts."""
    for destination, resolved in (("/dev2", "/dev"), ("/kernel", "/proc/sys/kernel")):
        want = Assignment(
            "m-x", "app", 1, "started", "img",
            mounts=[VolumeMount(_vid(), "data", destination, 64, "gocryptfs")],
        )  # fmt: skip
        with pytest.raises(ValidationError, match=f"symlink in the image to {resolved}"):
            check_destinations(want, linked_image.rootfs)
    vid, key = _vid(), secrets.token_bytes(32)
    want = Assignment(
        "m-x", "app", 1, "started", "img",
        mounts=[VolumeMount(vid, "data", "/data", 64, "gocryptfs")],
    )  # fmt: skip
    check_destinations(want, linked_image.rootfs)  # a path of the machine's own
    plain = _mount(manager, vid, key)
    machine = f"m-link-{secrets.token_hex(3)}"
    code, out = run_to_end(
        runtime,
        machines,
        spec(linked_image, machine, "echo planted > /data/x", volumes={"/data": plain}),
    )
    assert code == 0, out
    assert list((base_dir / "host-target").iterdir()) == []  # nothing reached the host path
    assert (plain / "x").read_text() == "planted\n"
    runtime.remove(machine)
    machines.remove(machine)
    manager.release([vid])
    manager.driver.destroy(vid)


def test_a_machine_whose_volume_daemon_died_is_started_again_with_it_mounted(
    runtime: RuncRuntime, image: Image, base_dir: Path, manager: VolumeManager
) -> None:
    """gocryptfs killed under a running machine (OOM, a crash): the machine would see
    only ENOTCONN for good. The agent kills it; its restart mounts the volume anew."""
    vid, key = _vid(), secrets.token_bytes(32)
    reconciler = Reconciler(
        runtime,
        ImageStore(base_dir / "images", uid_base=BASE_UID),
        base_dir / f"agent-{vid}",
        volumes=manager,
        volume_key_source=lambda want: {vid: key},
    )
    machine = f"m-stale-{secrets.token_hex(3)}"
    want = Assignment(
        machine, "app", 1, "started", f"oci:{base_dir / 'layout'}:latest",
        args=["/bin/sh", "-c", "cat /data/f 2>/dev/null; echo kept > /data/f; exec sleep 600"],
        mounts=[VolumeMount(vid, "data", "/data", 64, "gocryptfs")],
    )  # fmt: skip
    try:
        reconciler.reconcile([want], time.time())
        assert runtime.state(machine).status == "running"
        plain = manager.layout.plain(vid)
        wait_for(lambda: (plain / "f").exists())
        (daemon,) = _mounts.daemons_serving(plain)
        os.kill(daemon, signal.SIGKILL)
        wait_for(lambda: _mounts.is_stale(plain))
        in_use = reconciler.volumes_in_use()
        assert manager.stale(in_use) == [vid]
        assert reconciler.kill_holders(manager.stale(in_use)) == [machine]
        wait_for(lambda: runtime.state(machine).status != "running")

        def started_again() -> bool:
            reconciler.reconcile([want], time.time())
            return runtime.state(machine).status == "running" and not _mounts.is_stale(plain)

        wait_for(started_again, timeout=60)
        assert manager.stale(reconciler.volumes_in_use()) == []
        wait_for(lambda: "kept" in output(runtime, machine))  # it read its file back
    finally:
        runtime.remove(machine)
        manager.release([vid])
    manager.driver.destroy(vid)
