"""The volume jobs this host does: asked for each round, done off the agent's loop.

``VolumeJobs.poll`` (from ``Agent.sync_volumes``) takes the host's pending
jobs from the control plane, with a one-time key to which the repository's
secrets are sealed, and hands each to a small pool of worker threads, so a
long backup never holds the loop that starts other tenants' machines; each
worker reports its job done or failed through the link. The repository's
secrets exist only in the worker's memory for the job's length.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from hangar.agent.volumes.manager import VolumeManager
from hangar.agent.volumes.snapshots import (
    Snapshots,
    check_keep_days,
    new_snapshot_id,
)
from hangar.backups.restic import Repository, Restic, Retention
from hangar.contract.links import ControlPlaneLink
from hangar.contract.volumejobs import VolumeJob, VolumeJobResult
from hangar.crypto.secretbox import Opener
from hangar.crypto.volumekeys import open_sealed_keys
from hangar.errors import HangarError, IntegrityError

__all__ = ["VolumeJobs"]

log = logging.getLogger("hangar.agent.volumes")
WORKERS = 2
POLL_SECONDS = 2.0
IDLE_SECONDS = 120.0


class VolumeJobs:
    def __init__(
        self, link: ControlPlaneLink, volumes: VolumeManager, *, every: float = POLL_SECONDS
    ) -> None:
        self.link = link
        # Asked at most this often: the agent's rounds are faster, and each ask is a call.
        self.every = every
        self._next = 0.0
        self.snapshots = Snapshots(volumes.layout, volumes.driver)
        for volume_id in self.snapshots.thaw_stale():
            log.warning(
                "volume %s: thawed, left frozen by a snapshot a killed agent took", volume_id
            )
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="volume-job")
        self._lock = threading.Lock()
        self._running: set[str] = set()

    def poll(self) -> int:
        """Take what the control plane has for this host; how many started."""
        with self._lock:
            if len(self._running) >= WORKERS:
                return 0
        now = time.monotonic()
        if now < self._next:
            return 0
        self._next = now + self.every
        opener = Opener()
        taken = self.link.volume_jobs(opener.public_b64())
        for job, sealed in taken:
            with self._lock:
                self._running.add(job.id)
            self._pool.submit(self._run, job, sealed, opener)
        return len(taken)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _run(self, job: VolumeJob, sealed: dict[str, str] | None, opener: Opener) -> None:
        try:
            try:
                result = VolumeJobResult(
                    job_id=job.id, ok=True, result=self.do(job, sealed, opener)
                )
            except (HangarError, OSError) as exc:
                log.warning("volume job %s (%s) failed: %s", job.id, job.kind, exc)
                result = VolumeJobResult(job_id=job.id, ok=False, error=str(exc)[:4000])
            self.link.volume_job_done(result)
        except Exception:
            log.exception("volume job %s could not be reported", job.id)
        finally:
            with self._lock:
                self._running.discard(job.id)

    def _repository(self, job: VolumeJob, sealed: dict[str, str] | None, opener: Opener) -> Restic:
        if sealed is None:
            raise IntegrityError(f"job {job.id} came without its repository")
        values = opener.open(sealed, f"volume-job:{job.id}")
        return Restic(
            Repository(
                values["location"],
                values["password"],
                rest_user=values.get("rest_user", ""),
                rest_password=values.get("rest_password", ""),
                s3_key_id=values.get("s3_key_id", ""),
                s3_secret=values.get("s3_secret", ""),
                s3_region=values.get("s3_region", ""),
            )
        )

    def _export(self, job: VolumeJob, sealed: dict[str, str] | None, opener: Opener) -> int:
        """Decrypt the snapshot into a tar, streamed to the control plane as it is made."""
        if sealed is None:
            raise IntegrityError(f"export {job.id} came without the volume's key")
        key = open_sealed_keys(opener, sealed, job.id).get(job.volume_id)
        if key is None:
            raise IntegrityError(f"export {job.id} came without the volume's key")
        pipe: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        written: list[int] = []
        failed: list[BaseException] = []

        class _Writer:
            def write(self, data: bytes) -> int:
                pipe.put(bytes(data), timeout=IDLE_SECONDS)
                return len(data)

        def produce() -> None:
            try:
                written.append(
                    self.snapshots.export_tar(
                        job.volume_id,
                        job.snapshot_id,
                        key,
                        _Writer(),  # type: ignore[arg-type]
                    )
                )
            except BaseException as exc:
                failed.append(exc)
            finally:
                with contextlib.suppress(queue.Full):
                    pipe.put(None, timeout=IDLE_SECONDS)

        def chunks() -> Iterator[bytes]:
            while (item := pipe.get(timeout=IDLE_SECONDS)) is not None:
                yield item
            if failed:
                raise failed[0]

        producer = threading.Thread(target=produce, name=f"export-{job.id}", daemon=True)
        producer.start()
        try:
            self.link.volume_export(job.id, chunks())
        finally:
            # The upload may have stopped early: let the producer finish and unmount.
            while producer.is_alive():
                with contextlib.suppress(queue.Empty):
                    pipe.get(timeout=0.1)
            producer.join()
        if failed:
            raise failed[0]
        return written[0] if written else 0

    def do(self, job: VolumeJob, sealed: dict[str, str] | None, opener: Opener) -> dict[str, Any]:
        """Do one job; what it produced (never a key or a password)."""
        snaps = self.snapshots
        if job.kind == "snapshot":
            info = snaps.take(job.volume_id, new_snapshot_id(), reason=job.reason)
            keep = check_keep_days(job.keep_days) if job.keep_days else 0
            pruned = snaps.prune(job.volume_id, keep) if keep else []
            return {**asdict(info), "pruned": pruned}
        if job.kind == "restore":
            return asdict(snaps.restore(job.volume_id, job.snapshot_id))
        if job.kind == "fork":
            return asdict(snaps.fork(job.volume_id, job.snapshot_id, job.new_volume_id))
        if job.kind == "export":
            return {"bytes": self._export(job, sealed, opener)}
        restic = self._repository(job, sealed, opener)
        if job.kind == "backup":
            restic.ensure()
            snapshot_id = job.snapshot_id
            made: dict[str, Any] | None = None
            if not snapshot_id:
                info = snaps.take(job.volume_id, new_snapshot_id(), reason="backup")
                snapshot_id, made = info.id, asdict(info)
                made["pruned"] = []
            summary = snaps.backup(
                restic, job.volume_id, snapshot_id, tags=(job.org_tag,) if job.org_tag else ()
            )
            out: dict[str, Any] = {
                "backup_id": summary.snapshot_id,
                "bytes": summary.bytes_processed,
                "added": summary.bytes_added,
                "seconds": summary.seconds,
            }
            if job.keep_daily or job.keep_weekly or job.keep_monthly:
                policy = Retention(job.keep_daily, job.keep_weekly, job.keep_monthly)
                out["forgotten"] = len(restic.forget(policy, tags=(f"volume:{job.volume_id}",)))
            if made is not None:
                out["snapshot"] = made
            else:
                out["snapshot"] = {"id": snapshot_id}
            return out
        if job.kind == "restore_backup":
            info = snaps.restore_backup(
                restic, job.backup_id, job.new_volume_id, expect_volume=job.volume_id
            )
            return asdict(info)
        if job.kind == "drill":
            drill = snaps.drill(
                restic, job.backup_id, read_data_subset=job.read_data_subset or "5%"
            )
            return asdict(drill)
        raise HangarError(f"unknown volume job {job.kind!r}")
