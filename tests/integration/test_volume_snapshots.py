"""Volumes' snapshots, backups, restores and drills with real gocryptfs, fsfreeze and restic.

A volume is made and mounted by the gocryptfs driver over a loop-mounted
ext4; snapshots are taken while a writer is busy in it; backups go to a
real REST server (``rclone serve restic``); a restore lands on "another
host" (another volumes directory and run directory, another driver).
"""

from __future__ import annotations

import datetime as dt
import io
import os
import secrets
import shutil
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hangar.agent.volumes.base import VolumeLayout, VolumeSpec
from hangar.agent.volumes.gocryptfs import GocryptfsDriver
from hangar.agent.volumes.snapshots import Snapshots, new_snapshot_id
from hangar.backups.restic import Repository, Restic
from hangar.errors import Conflict, HangarError, IntegrityError
from tests.backup_targets import RestServer, rest_server

__all__ = ["rest_server"]

pytestmark = pytest.mark.slow

CANARY = b"CANARY-" + secrets.token_hex(8).encode()


class Host:
    """One host's volumes: its own directories and driver."""

    def __init__(self, base: Path) -> None:
        self.layout = VolumeLayout(base / "volumes", Path("/run") / f"hangar-t-{base.name}")
        self.driver = GocryptfsDriver(self.layout)
        self.snapshots = Snapshots(self.layout, self.driver)

    def close(self) -> None:
        for volume_id in self.layout.on_disk():
            self.driver.unmount(volume_id)
        shutil.rmtree(self.layout.run_dir, ignore_errors=True)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[Host, Host]]:
    if GocryptfsDriver.unavailable():
        pytest.fail(f"gocryptfs: {GocryptfsDriver.unavailable()}: run `make deps`")
    one = Host(tmp_path / f"h1{secrets.token_hex(3)}")
    two = Host(tmp_path / f"h2{secrets.token_hex(3)}")
    try:
        yield one, two
    finally:
        one.close()
        two.close()


def volume(host: Host, key: bytes, volume_id: str = "vol_data0001") -> tuple[VolumeSpec, Path]:
    spec = VolumeSpec(volume_id, 64, "gocryptfs")
    return spec, host.driver.mount(spec, key, owner=0)


def test_a_snapshot_taken_while_a_machine_writes_is_ciphertext_and_restores(
    hosts: tuple[Host, Host],
) -> None:
    host, _ = hosts
    key = secrets.token_bytes(32)
    spec, data = volume(host, key)
    (data / "canary.txt").write_bytes(CANARY)
    stop = threading.Event()
    written = [0]

    def writer() -> None:  # a machine busy in its volume while the snapshot is taken
        with (data / "journal.log").open("ab") as f:
            while not stop.is_set():
                f.write(b"x" * 4096)
                f.flush()
                os.fsync(f.fileno())
                written[0] += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while written[0] < 20:
            stop.wait(0.01)
        info = host.snapshots.take(spec.id, new_snapshot_id())
    finally:
        stop.set()
        thread.join()
    assert info.consistent == "frozen" and info.encryption == "gocryptfs"
    image = host.snapshots.image(spec.id, info.id)
    assert CANARY not in image.read_bytes()  # the snapshot is ciphertext
    assert written[0] > 20  # the writer went on after the thaw
    (data / "after.txt").write_bytes(b"written after the snapshot")
    (data / "canary.txt").write_bytes(b"overwritten")
    with pytest.raises(Conflict, match="in use"):
        host.snapshots.restore(spec.id, info.id)
    host.driver.unmount(spec.id)
    host.snapshots.restore(spec.id, info.id)
    data = host.driver.mount(spec, key, owner=0)
    assert (data / "canary.txt").read_bytes() == CANARY
    assert not (data / "after.txt").exists()
    assert (data / "journal.log").stat().st_size % 4096 == 0


def test_a_damaged_snapshot_is_refused_and_old_ones_are_pruned(hosts: tuple[Host, Host]) -> None:
    host, _ = hosts
    key = secrets.token_bytes(32)
    spec, data = volume(host, key)
    (data / "canary.txt").write_bytes(CANARY)
    old = host.snapshots.take(spec.id, new_snapshot_id(), reason="schedule")
    new = host.snapshots.take(spec.id, new_snapshot_id(), reason="schedule")
    later = dt.datetime.fromisoformat(new.created_at) + dt.timedelta(days=6)
    assert host.snapshots.prune(spec.id, 5, now=later) == [old.id]  # the newest always stays
    assert [s.id for s in host.snapshots.taken(spec.id)] == [new.id]
    image = host.snapshots.image(spec.id, new.id)
    with image.open("r+b") as f:
        f.seek(1 << 20)
        f.write(b"\xff" * 16)
    host.driver.unmount(spec.id)
    with pytest.raises(IntegrityError, match="damaged"):
        host.snapshots.restore(spec.id, new.id)


def test_backup_restores_onto_another_host_and_a_drill_finds_damage(
    hosts: tuple[Host, Host], rest_server: RestServer
) -> None:
    one, two = hosts
    key = secrets.token_bytes(32)
    spec, data = volume(one, key)
    (data / "canary.txt").write_bytes(CANARY)
    info = one.snapshots.take(spec.id, new_snapshot_id())
    repo = Restic(
        Repository(
            rest_server.url("org"),
            "pw-" + secrets.token_hex(16),
            rest_user=rest_server.user,
            rest_password=rest_server.password,
        )
    )
    repo.ensure()
    summary = one.snapshots.backup(repo, spec.id, info.id, tags=("org:acme",))
    assert summary.bytes_processed >= info.bytes
    # Nothing of the plaintext reaches the repository.
    for path in rest_server.repo_dir("org").rglob("*"):
        if path.is_file():
            assert CANARY not in path.read_bytes()

    # Another host, another directory: the backup becomes a new volume there,
    # and opens with the volume's key (which the control plane keeps).
    restored = two.snapshots.restore_backup(repo, summary.snapshot_id, "vol_copy0001")
    assert restored.sha256 == info.sha256
    copy = two.driver.mount(VolumeSpec("vol_copy0001", 64, "gocryptfs"), key, owner=0)
    assert (copy / "canary.txt").read_bytes() == CANARY

    drill = one.snapshots.drill(repo, summary.snapshot_id, read_data_subset="100%")
    assert drill.ok and drill.check_ok and drill.restored_sha256 == info.sha256
    assert drill.bytes == info.bytes and drill.volume_id == spec.id

    for pack in (p for p in (rest_server.repo_dir("org") / "data").rglob("*") if p.is_file()):
        blob = bytearray(pack.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        pack.write_bytes(bytes(blob))
    try:
        broken = one.snapshots.drill(repo, summary.snapshot_id, read_data_subset="100%")
    except HangarError:
        pass  # restic refused to restore from damaged packs: the drill failed loudly
    else:
        assert not broken.ok and not broken.check_ok


def test_export_streams_the_snapshot_decrypted_only_with_its_key(
    hosts: tuple[Host, Host],
) -> None:
    host, _ = hosts
    key = secrets.token_bytes(32)
    spec, data = volume(host, key)
    (data / "canary.txt").write_bytes(CANARY)
    (data / "sub").mkdir()
    (data / "sub" / "b.txt").write_bytes(b"b")
    info = host.snapshots.take(spec.id, new_snapshot_id())
    out = io.BytesIO()
    written = host.snapshots.export_tar(spec.id, info.id, key, out)
    assert written == len(out.getvalue()) > 0
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        names = set(tar.getnames())
        member = tar.extractfile("./canary.txt")
        assert member is not None and member.read() == CANARY
    assert {"./canary.txt", "./sub/b.txt"} <= names
    wrong = io.BytesIO()
    with pytest.raises(IntegrityError, match="does not open"):
        host.snapshots.export_tar(spec.id, info.id, secrets.token_bytes(32), wrong)
    assert CANARY not in wrong.getvalue()
    assert not list(host.layout.run_dir.glob(".export-*"))  # unmounted and removed


def test_a_volume_left_frozen_by_a_killed_agent_is_thawed_at_start(
    hosts: tuple[Host, Host],
) -> None:
    import subprocess

    host, _ = hosts
    spec, data = volume(host, secrets.token_bytes(32))
    lower = host.layout.lower(spec.id)
    subprocess.run(["fsfreeze", "--freeze", str(lower)], check=True)  # as a killed snapshot left it
    try:
        writer = threading.Thread(target=lambda: (data / "late.txt").write_bytes(b"x" * 8192))
        # A fresh agent's first step thaws it; the machine's write then completes.
        assert Snapshots(host.layout, host.driver).thaw_stale() == [spec.id]
        writer.start()
        writer.join()
        assert (data / "late.txt").stat().st_size == 8192
        assert Snapshots(host.layout, host.driver).thaw_stale() == []  # nothing frozen now
    finally:
        subprocess.run(["fsfreeze", "--unfreeze", str(lower)], check=False)


def test_retention_forgets_a_volumes_older_backups_and_no_other_volumes(
    hosts: tuple[Host, Host], tmp_path: Path
) -> None:
    from hangar.backups.restic import Retention

    host, _ = hosts
    repo = Restic(Repository(str(tmp_path / "repo"), "pw-" + secrets.token_hex(16)))
    repo.ensure()
    ids = {}
    for volume_id in ("vol_keep0001", "vol_keep0002"):
        spec, data = volume(host, secrets.token_bytes(32), volume_id)
        (data / "f").write_bytes(CANARY)
        for _ in range(2):
            info = host.snapshots.take(spec.id, new_snapshot_id())
            ids.setdefault(volume_id, []).append(
                host.snapshots.backup(repo, spec.id, info.id, tags=("org:acme",)).snapshot_id
            )
    keep = Retention(daily=1, weekly=0, monthly=0)
    removed = repo.forget(keep, tags=("volume:vol_keep0001",))
    assert [r[:8] for r in removed] == [ids["vol_keep0001"][0]]  # the older of that volume only
    left = {s.short_id for s in repo.snapshots()}
    assert left == {ids["vol_keep0001"][1], *ids["vol_keep0002"]}
