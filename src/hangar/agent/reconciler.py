"""The agent's reconciler, applying half: turn plans into runtime calls.

``Reconciler.reconcile(assignments, now)`` observes the runtime, asks the pure
planner (``domain.reconcile.plan``) what to do, and does it. Each machine's
version, restart times and failure are kept in a small JSON file beside the
runtime's handles, so an agent restarted in the middle of anything adopts
what runs without touching it and keeps counting restarts where it left off.
One machine's failure is recorded and does not stop the others.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from hangar.agent.health import HealthMonitor
from hangar.agent.offload import Offload
from hangar.agent.runtimes.base import MachineSpec, Runtime
from hangar.agent.volumes.manager import VolumeManager, check_destinations
from hangar.contract.assignments import Assignment
from hangar.domain.reconcile import Action, ActionKind, Desired, Observed, plan
from hangar.errors import HangarError, IntegrityError, NotFound, ValidationError
from hangar.images.oci import ImageRef, parse_image_ref
from hangar.images.safeio import open_regular
from hangar.images.store import Image, ImageStore, resolve_inside
from hangar.telemetry.metrics import MACHINE_RESTARTS, MACHINE_START_SECONDS

__all__ = [
    "MAX_KILL_SECONDS",
    "ImageSource",
    "MachineSummary",
    "Outcome",
    "Reconciler",
    "SecretSource",
    "VolumeKeySource",
]

# However long a machine asks to be given to stop, it is killed by then: a
# stop holds one of its organization's slots, never for longer than this.
MAX_KILL_SECONDS = 300.0


ImageSource = Callable[[Assignment], ImageRef]
"""Where this host gets an assignment's image as a local layout."""

SecretSource = Callable[[Assignment], dict[str, str]]
"""Where this host gets the secrets of a machine it is starting."""


VolumeKeySource = Callable[[Assignment], dict[str, bytes]]
"""Where this host gets the keys of the volumes a machine it is starting mounts."""


def _local_layout(want: Assignment) -> ImageRef:
    """On the control plane's own host, the release's layout is on this disk."""
    return parse_image_ref(want.image)


@dataclass(frozen=True)
class Outcome:
    action: Action
    ok: bool
    error: str = ""


def _parse_user(user: str, rootfs: Path) -> tuple[int, int]:
    """An image's ``User`` ("", "uid", "uid:gid" or a name in its /etc/passwd)."""
    if not user:
        return 0, 0
    name, _, group = user.partition(":")
    if name.isdigit():
        uid = int(name)
        return uid, int(group) if group.isdigit() else uid
    for line in _image_passwd(rootfs).splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[0] == name and fields[2].isdigit():
            gid = group if group.isdigit() else fields[3]
            if gid.isdigit():
                return int(fields[2]), int(gid)
    raise ValidationError(f"the image's user {user!r} is not in its /etc/passwd")


MAX_PASSWD = 1 << 20


def _image_passwd(rootfs: Path) -> str:
    """The image's /etc/passwd, resolved as if ``rootfs`` were ``/``; "" if it has none.

    Links inside the image resolve inside it (``/etc`` may be one), never to
    the host's files; a FIFO, device or file over 1 MiB is refused, so
    reading neither blocks nor runs on.
    """
    try:
        path = resolve_inside(rootfs, ["etc", "passwd"], follow_last=True)
        with open_regular(rootfs, path.relative_to(rootfs).parts, max_size=MAX_PASSWD) as f:
            return f.read(MAX_PASSWD).decode("utf-8", "replace")
    except NotFound:
        return ""
    except IntegrityError as exc:
        raise ValidationError(f"the image's /etc/passwd cannot be read: {exc.message}") from exc


def _as_hangar_error(error: BaseException) -> HangarError:
    if isinstance(error, HangarError):
        return error
    return HangarError(f"{type(error).__name__}: {error}")


@dataclass(frozen=True)
class MachineSummary:
    """A machine on this host, as metrics show it."""

    machine_id: str
    org: str
    app: str
    state: str  # running, stopped, failed or absent


class Reconciler:
    def __init__(
        self,
        runtime: Runtime,
        images: ImageStore,
        state_dir: Path,
        health: HealthMonitor | None = None,
        image_source: ImageSource | None = None,
        secret_source: SecretSource | None = None,
        offload: Offload | None = None,
        volumes: VolumeManager | None = None,
        volume_key_source: VolumeKeySource | None = None,
    ) -> None:
        self.runtime = runtime
        # This host's volumes (None: it has no volume backend); keys come per start.
        self.volumes = volumes
        self.volume_key_source = volume_key_source
        # With a pool (as the agent runs it), stops and image pulls run there,
        # bounded per organization, and never hold up another machine's action.
        self.offload = offload
        self._pulled: dict[str, Image] = {}
        self._pull_failed: dict[str, HangarError] = {}
        self.images = images
        self.image_source: ImageSource = image_source or _local_layout
        self.secret_source = secret_source
        # The resolver machines are told of (this host's .internal DNS, once it runs).
        self.nameservers: list[ipaddress.IPv6Address] = []
        self.meta_dir = state_dir / "assignments"
        self.meta_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.health = health or HealthMonitor()

    # what this host remembers per machine

    def _meta(self, machine_id: str) -> dict[str, Any]:
        path = self.meta_dir / f"{machine_id}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _save_meta(self, machine_id: str, meta: dict[str, Any]) -> None:
        path = self.meta_dir / f"{machine_id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, path)

    def observe(self) -> dict[str, Observed]:
        observed = {}
        for machine_id in self.runtime.list():
            state = self.runtime.state(machine_id)
            meta = self._meta(machine_id)
            finished = None
            if state.finished_at:
                finished = dt.datetime.fromisoformat(state.finished_at).timestamp()
            observed[machine_id] = Observed(
                machine_id,
                meta.get("version"),
                "running" if state.status == "running" else state.status,
                exit_code=state.exit_code,
                finished_at=finished,
                restarts=tuple(meta.get("restarts", ())),
                failed=bool(meta.get("failed", False)),
                generation=int(meta.get("generation", 0)),
            )
        return observed

    def machines(self) -> list[MachineSummary]:
        """Every machine the runtime holds here; one whose state cannot be read is skipped."""
        out = []
        for machine_id in self.runtime.list():
            try:
                state = self.runtime.state(machine_id)
                meta = self._meta(machine_id)
            except (HangarError, OSError, ValueError):
                continue  # removed while being read
            status = "failed" if meta.get("failed") else state.status
            out.append(
                MachineSummary(
                    machine_id, str(meta.get("org", "")), str(meta.get("app", "")), status
                )
            )
        return out

    # applying

    def reconcile(self, assignments: Sequence[Assignment], now: float) -> list[Outcome]:
        by_id = {a.machine_id: a for a in assignments}
        desired = {
            a.machine_id: Desired(a.machine_id, a.version, a.state, a.restart, a.generation)
            for a in assignments
        }
        outcomes = self._collect() if self.offload is not None else []
        observed = self.observe()
        for action in plan(desired, observed, now):
            if self.offload is not None and self.offload.busy(f"machine:{action.machine_id}"):
                continue  # its stop is under way; look again next round
            try:
                self._apply(action, by_id.get(action.machine_id), now)
            except HangarError as exc:
                outcomes.append(Outcome(action, False, exc.message))
            else:
                outcomes.append(Outcome(action, True))
        # Machines adopted from an earlier agent run untouched, so nothing above
        # watched them: check them again (no grace: they have been up a while).
        acted = {o.action.machine_id for o in outcomes if o.action.kind is not ActionKind.WAIT}
        for want in assignments:
            seen = observed.get(want.machine_id)
            if (
                want.state == "started"
                and want.machine_id not in acted
                and seen is not None
                and seen.status == "running"
                and seen.version == want.version
                and not self.health.watching(want.machine_id)
            ):
                self._watch(want, now - max((c.grace_period for c in want.checks), default=0.0))
        return outcomes

    def _apply(self, action: Action, want: Assignment | None, now: float) -> None:
        kind, machine_id = action.kind, action.machine_id
        if kind is ActionKind.WAIT:
            return
        if kind is ActionKind.REMOVE:
            self.health.forget(machine_id)
            held = self._meta(machine_id).get("volumes", [])
            self.runtime.remove(machine_id)
            self._release(held)
            (self.meta_dir / f"{machine_id}.json").unlink(missing_ok=True)
            return
        assert want is not None
        if kind is ActionKind.STOP:
            self.health.forget(machine_id)
            if self.offload is not None:
                # A machine may wait out its whole kill timeout: never on the loop.
                # Not started while its organization's slots are full: next round.
                self.offload.submit(
                    f"machine:{machine_id}",
                    want.org,
                    partial(self._stop, want),
                )
                return
            self._stop(want)
        elif kind is ActionKind.FAIL:
            meta = self._meta(machine_id)
            self._save_meta(machine_id, {**meta, "failed": True, "reason": action.reason})
        elif kind in (ActionKind.START, ActionKind.REPLACE):
            if not self._image_ready(want):
                return  # being pulled off the loop; started on a later round
            if kind is ActionKind.REPLACE:
                held = self._meta(machine_id).get("volumes", [])
                self.runtime.remove(machine_id)
                # The new one may hold other volumes (or none): let go of the old ones.
                self._release(set(held) - {m.volume_id for m in want.mounts})
            spec = self._spec(want)
            self._save_meta(
                machine_id,
                {
                    "version": want.version,
                    "generation": want.generation,
                    "restarts": [],
                    "failed": False,
                    "app": want.app,
                    "org": want.org,
                    "volumes": [m.volume_id for m in want.mounts],
                },
            )
            started = time.perf_counter()
            self.runtime.start(spec)
            MACHINE_START_SECONDS.observe(time.perf_counter() - started)
            self._watch(want, now)
        elif kind is ActionKind.RESTART:
            meta = self._meta(machine_id)
            if not self._image_ready(want):
                return
            restarts = [*meta.get("restarts", []), now]
            self._save_meta(machine_id, {**meta, "restarts": restarts[-100:]})
            self.runtime.restart(self._spec(want))
            MACHINE_RESTARTS.labels(want.org, want.app).inc()
            self._watch(want, now)

    def _stop(self, want: Assignment) -> None:
        """Stop the machine, then unmount its volumes (nothing of it writes to them now)."""
        self.runtime.stop(
            want.machine_id,
            signal=want.kill_signal,
            timeout=min(want.kill_timeout, MAX_KILL_SECONDS),
        )
        self._release(self._meta(want.machine_id).get("volumes", []))

    def _release(self, volume_ids: Any) -> None:
        if self.volumes is not None and volume_ids:
            self.volumes.release(str(v) for v in volume_ids)

    def volumes_in_use(self) -> set[str]:
        """Volumes held by the machines this runtime has (running or not)."""
        held: set[str] = set()
        for machine_id in self.runtime.list():
            held.update(str(v) for v in self._meta(machine_id).get("volumes", []))
        return held

    def kill_holders(self, volume_ids: Iterable[str]) -> list[str]:
        """SIGKILL the running machines holding any of ``volume_ids`` (whose mount died):
        each then stops, failed, and its restart policy starts it again, which mounts
        the volume anew. The machines killed."""
        wanted = set(volume_ids)
        killed = []
        for machine_id in self.runtime.list():
            if not wanted & {str(v) for v in self._meta(machine_id).get("volumes", [])}:
                continue
            if self.runtime.state(machine_id).status != "running":
                continue
            self.runtime.signal(machine_id, "SIGKILL")
            killed.append(machine_id)
        return killed

    def _watch(self, want: Assignment, now: float) -> None:
        if want.address is not None:
            self.health.watch(
                want.machine_id, ipaddress.IPv6Address(want.address), want.checks, now, want.org
            )

    # work off the loop

    def _collect(self) -> list[Outcome]:
        """Outcomes of stops and pulls that finished since the last round."""
        assert self.offload is not None
        outcomes = []
        for key, future in self.offload.take().items():
            kind, _, name = key.partition(":")
            error = future.exception()
            if kind == "pull":
                if error is None:
                    self._pulled[name] = future.result()
                else:
                    self._pull_failed[name] = _as_hangar_error(error)
            elif error is not None:
                failed = _as_hangar_error(error)
                outcomes.append(Outcome(Action(ActionKind.STOP, name), False, failed.message))
        return outcomes

    def _image_ready(self, want: Assignment) -> bool:
        """True if the image is unpacked here; else starts pulling it off the loop."""
        if self.offload is None:
            return True
        if want.image_digest is not None and self.images.get(want.image_digest) is not None:
            return True
        key = want.image_digest or want.image
        if key in self._pulled:
            return True
        failed = self._pull_failed.pop(key, None)
        if failed is not None:
            raise failed
        self.offload.submit(f"pull:{key}", want.org, partial(self._pull, want))
        return False

    def _pull(self, want: Assignment) -> Image:
        return self.images.pull(self.image_source(want))

    def _image(self, want: Assignment) -> Image:
        """The unpacked image, exactly the digest the release pinned (if it pinned one)."""
        pulled = self._pulled.pop(want.image_digest or want.image, None)
        if want.image_digest is not None:
            known = self.images.get(want.image_digest)
            if known is not None:
                return known
        image = pulled or self.images.pull(self.image_source(want))
        if want.image_digest is not None and image.digest != want.image_digest:
            raise IntegrityError(
                f"image {want.image} is now {image.digest}, not the {want.image_digest}"
                " the release pinned",
                hint="deploy again to run the image as it is now",
            )
        return image

    def _spec(self, want: Assignment) -> MachineSpec:
        image = self._image(want)
        cfg = image.config
        args = want.args if want.args is not None else cfg.entrypoint + cfg.cmd
        uid, gid = _parse_user(cfg.user, image.rootfs)
        env = dict(e.split("=", 1) for e in cfg.env if "=" in e)
        env.update(want.env)
        secrets: dict[str, str] = {}
        if self.secret_source is not None:
            # Fetched at each start, held only in memory and the tmpfs bundle.
            secrets = self.secret_source(want)
            env.update(secrets)
        files = {}
        for guest_path, name in want.files.items():
            if name not in secrets:
                raise ValidationError(
                    f"file {guest_path} wants secret {name}, which the app does not have",
                    hint=f"hangar secrets set {name}=…",
                )
            files[guest_path] = secrets[name]
        volumes: dict[str, Path] = {}
        if want.mounts:
            if self.volumes is None or self.volume_key_source is None:
                raise ValidationError(
                    f"machine {want.machine_id} mounts volumes, and this host has no volume "
                    "backend",
                    hint="install gocryptfs (or cryptsetup, with device-mapper) on the host",
                )
            check_destinations(want, image.rootfs)
            # Delivered for this start only; the drivers pass them on stdin and drop them.
            keys = self.volume_key_source(want)
            # The machine's root owns each new volume; its user's group may write there.
            root = self.runtime.root_uid
            group = root + gid if gid < 65536 else None  # a group the namespace maps
            volumes = self.volumes.mount_for(want, keys, owner=root, group=group)
            del keys
        hosts: dict[str, str] = {}
        if want.address is not None:
            env["HANGAR_PRIVATE_IP"] = want.address
            hosts[f"{want.machine_id}.vm.{want.app}.internal"] = want.address
        return MachineSpec(
            id=want.machine_id,
            rootfs=image.rootfs,
            args=args,
            env=env,
            cwd=cfg.working_dir,
            uid=uid,
            gid=gid,
            cpus=want.cpus,
            memory_mb=want.memory_mb,
            address=ipaddress.IPv6Address(want.address) if want.address else None,
            hosts=hosts,
            files=files,
            volumes=volumes,
            nameservers=[str(ns) for ns in self.nameservers],
        )

    def describe(self, machine_id: str) -> dict[str, Any]:
        """What this host knows of a machine, for status reports."""
        state = self.runtime.state(machine_id)
        return {
            **self._meta(machine_id),
            **asdict(state),
            "healthy": self.health.healthy(machine_id),
            "checks": [asdict(r) for r in self.health.results(machine_id)],
        }
