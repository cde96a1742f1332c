"""The restic driver: one repository, its password and its backend's credentials.

Every secret reaches ``restic`` through its environment, built from nothing
for each command (``RESTIC_REPOSITORY``, ``RESTIC_PASSWORD``, the S3 keys):
never in argv, where any user's ``ps`` reads it, never in a file. restic
runs with ``--no-cache`` so nothing of the repository is kept on the host
between commands. Errors name the command and restic's own words, with
every secret of the repository replaced by ``[redacted]`` first.

Callers may rely on: a ``Restic`` never starts ``restic`` with a secret in
its arguments; ``ensure`` either opens the repository with this password
(creating it when there is none) or raises; ``check`` reports damage as a
result, not an exception, so a drill can record it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from hangar import hostcmd
from hangar.errors import CommandError, HangarError, KeyMaterialError, ValidationError

__all__ = [
    "CheckResult",
    "Progress",
    "Repository",
    "Restic",
    "Retention",
    "Snapshot",
    "Summary",
    "check_subset",
]

REDACTED = "[redacted]"
# Status lines while a backup runs: a few a second is plenty for a progress bar.
_PROGRESS_FPS = "2"
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Repository:
    """Where a repository is and how to open it.

    ``location`` is restic's repository string without credentials (safe to
    show: ``rest:https://backup.example/clinic``, ``s3:https://s3.example/b``,
    ``/srv/backups/x``). ``rest_user``/``rest_password`` are a REST server's
    HTTP basic credentials, put into the URL only inside the environment;
    ``s3_key_id``/``s3_secret`` are an S3 backend's keys.
    """

    location: str
    password: str = field(repr=False)
    rest_user: str = ""
    rest_password: str = field(default="", repr=False)
    s3_key_id: str = ""
    s3_secret: str = field(default="", repr=False)
    s3_region: str = ""

    def secrets(self) -> list[str]:
        return [s for s in (self.password, self.rest_password, self.s3_secret) if s]

    def _url(self) -> str:
        if not self.rest_user:
            return self.location
        scheme, _, rest = self.location.partition("://")
        from urllib.parse import quote

        creds = f"{quote(self.rest_user, safe='')}:{quote(self.rest_password, safe='')}"
        return f"{scheme}://{creds}@{rest}"

    def environment(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", _DEFAULT_PATH),
            "RESTIC_REPOSITORY": self._url(),
            "RESTIC_PASSWORD": self.password,
            "RESTIC_PROGRESS_FPS": _PROGRESS_FPS,
            # restic reads nothing of the person's home: no config, no cache.
            "HOME": "/nonexistent",
            "TMPDIR": tempfile.gettempdir(),
        }
        if self.s3_key_id:
            env["AWS_ACCESS_KEY_ID"] = self.s3_key_id
            env["AWS_SECRET_ACCESS_KEY"] = self.s3_secret
        if self.s3_region:
            env["AWS_DEFAULT_REGION"] = self.s3_region
        return env


@dataclass(frozen=True)
class Snapshot:
    id: str
    short_id: str
    time: str
    hostname: str
    paths: list[str]
    tags: list[str]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Snapshot:
        return cls(
            id=str(data["id"]),
            short_id=str(data.get("short_id") or str(data["id"])[:8]),
            time=str(data["time"]),
            hostname=str(data.get("hostname", "")),
            paths=[str(p) for p in data.get("paths") or []],
            tags=[str(t) for t in data.get("tags") or []],
        )


@dataclass(frozen=True)
class Summary:
    """What one backup did."""

    snapshot_id: str
    files: int
    bytes_processed: int
    bytes_added: int
    seconds: float


@dataclass(frozen=True)
class Progress:
    percent: float
    bytes_done: int
    bytes_total: int


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str  # restic's report, secrets redacted; the errors when not ok


@dataclass(frozen=True)
class Retention:
    """What ``forget --prune`` keeps: the newest per day, week and month, the ``last``
    few, and everything newer than ``within_days``. Every count is bounded; at least
    one keeps something."""

    daily: int = 7
    weekly: int = 4
    monthly: int = 6
    within_days: int = 0
    last: int = 0

    def __post_init__(self) -> None:
        for name, value, top in (
            ("daily", self.daily, 366),
            ("weekly", self.weekly, 520),
            ("monthly", self.monthly, 120),
            ("within_days", self.within_days, 3660),
            ("last", self.last, 1000),
        ):
            if not 0 <= value <= top:
                raise ValidationError(f"retention {name} must be between 0 and {top}")
        if not (self.daily or self.weekly or self.monthly or self.within_days or self.last):
            raise ValidationError(
                "a retention policy that keeps nothing would delete every backup",
                hint="keep at least one daily, weekly or monthly backup",
            )

    def args(self) -> list[str]:
        args = [
            "--keep-daily",
            str(self.daily),
            "--keep-weekly",
            str(self.weekly),
            "--keep-monthly",
            str(self.monthly),
        ]
        if self.within_days:
            args += ["--keep-within", f"{self.within_days}d"]
        if self.last:
            args += ["--keep-last", str(self.last)]
        return args


class Restic:
    """restic commands against one repository."""

    def __init__(self, repo: Repository, *, binary: str = "restic", timeout: float = 3600) -> None:
        self.repo = repo
        self.binary = binary
        self.timeout = timeout

    # -- plumbing ---------------------------------------------------------------

    def redact(self, text: str) -> str:
        for secret in self.repo.secrets():
            text = text.replace(secret, REDACTED)
        if self.repo.rest_user:
            text = text.replace(self.repo._url(), self.repo.location)
        return text

    def _argv(self, *args: str) -> list[str]:
        return [self.binary, "--no-cache", *args]

    def _fail(self, exc: CommandError) -> CommandError:
        return CommandError(exc.argv, exc.returncode, self.redact(exc.stderr))

    def run(
        self, *args: str, timeout: float | None = None, check: bool = True
    ) -> hostcmd.Completed:
        """``restic ARGS`` with the repository's environment; CommandError (redacted) on failure."""
        try:
            return hostcmd.run(
                self._argv(*args),
                env=self.repo.environment(),
                timeout=timeout or self.timeout,
                check=check,
            )
        except CommandError as exc:
            raise self._fail(exc) from None

    def start(
        self,
        *args: str,
        stdout: hostcmd.Stream = hostcmd.PIPE,
        stderr: hostcmd.Stream = hostcmd.PIPE,
        cwd: Path | None = None,
    ) -> hostcmd.Process:
        """``restic ARGS`` running, for output read as it comes (backup, dump)."""
        return hostcmd.start(
            self._argv(*args),
            env=self.repo.environment(),
            stdout=stdout,
            stderr=stderr,
            cwd=str(cwd) if cwd is not None else None,
        )

    # -- the repository ---------------------------------------------------------

    def ensure(self) -> bool:
        """Open the repository with this password, creating it if there is none.

        True if it was created. KeyMaterialError if a repository is there and
        the password does not open it (it belongs to someone else, or the
        password was replaced).
        """
        probe = self.run("cat", "config", timeout=120, check=False)
        if probe.returncode == 0:
            return False
        said = self.redact((probe.stderr or b"").decode(errors="replace"))
        if "wrong password" in said or "no key found" in said:
            raise KeyMaterialError(
                f"a restic repository is at {self.repo.location} and Hangar's password"
                " does not open it",
                hint="give each organization (and the server) a repository of its own",
            )
        if not _missing(said):
            raise HangarError(f"restic cannot reach {self.repo.location}: {_last_line(said)}")
        self.run("init", timeout=300)
        return True

    def snapshots(self, tags: Sequence[str] = ()) -> list[Snapshot]:
        args = ["snapshots", "--json"]
        for tag in tags:
            args += ["--tag", tag]
        out = self.run(*args, timeout=300).stdout or b"null"
        data = json.loads(out) or []
        return sorted((Snapshot.from_json(s) for s in data), key=lambda s: s.time, reverse=True)

    def backup(
        self,
        root: Path,
        *,
        tags: Sequence[str] = (),
        host: str = "hangar",
        progress: Callable[[Progress], None] | None = None,
    ) -> Summary:
        """Back up what the directory ``root`` holds (a restore puts it back at the
        target's top); the snapshot's id and sizes. Reports progress as it goes."""
        proc, errors = self.backup_process(root, tags=tags, host=host)
        return self.finish_backup(proc, errors, progress)

    def backup_process(
        self, root: Path, *, tags: Sequence[str] = (), host: str = "hangar"
    ) -> tuple[hostcmd.Process, IO[bytes]]:
        """A backup started and left running (the caller finishes or kills it)."""
        args = ["backup", "--json", "--host", host]
        for tag in tags:
            args += ["--tag", tag]
        args += ["--", "."]
        # restic's warnings: no secret, never a pipe to fill; closed by finish_backup.
        errors = tempfile.TemporaryFile()  # noqa: SIM115
        return self.start(*args, stderr=errors, cwd=root), errors

    def finish_backup(
        self,
        proc: hostcmd.Process,
        errors: IO[bytes],
        progress: Callable[[Progress], None] | None = None,
    ) -> Summary:
        summary: dict[str, Any] | None = None
        try:
            assert proc.stdout is not None
            for message in _json_lines(proc.stdout):
                kind = message.get("message_type")
                if kind == "status" and progress is not None:
                    progress(
                        Progress(
                            float(message.get("percent_done", 0.0)),
                            int(message.get("bytes_done", 0)),
                            int(message.get("total_bytes", 0)),
                        )
                    )
                elif kind == "summary":
                    summary = message
            code = proc.wait(timeout=self.timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            errors.seek(0)
            said = errors.read().decode(errors="replace")
            errors.close()
        if code != 0 or summary is None:
            raise CommandError([self.binary, "backup"], code, self.redact(said))
        return Summary(
            snapshot_id=str(summary["snapshot_id"]),
            files=int(summary.get("files_new", 0))
            + int(summary.get("files_changed", 0))
            + int(summary.get("files_unmodified", 0)),
            bytes_processed=int(summary.get("total_bytes_processed", 0)),
            bytes_added=int(summary.get("data_added", 0)),
            seconds=float(summary.get("total_duration", 0.0)),
        )

    def restore(self, snapshot: str, target: Path) -> None:
        """Restore ``snapshot`` into ``target`` (what its directory held, at the top)."""
        _check_snapshot_id(snapshot)
        self.run("restore", snapshot, "--target", str(target))

    def dump_tar(self, snapshot: str, path: str = "/") -> hostcmd.Process:
        """``restic dump --archive tar``: the snapshot's ``path`` streamed out as a tar."""
        _check_snapshot_id(snapshot)
        return self.start("dump", "--archive", "tar", snapshot, path)

    def unlock(self) -> None:
        """Remove stale locks (a killed restic's); a live process's lock stays."""
        self.run("unlock", timeout=300)

    def check(self, *, read_data_subset: str = "") -> CheckResult:
        """Check the repository's structure and, with ``read_data_subset`` ("10%",
        "1/5"), read back that part of the data and verify it."""
        args = ["check"]
        if read_data_subset:
            check_subset(read_data_subset)
            args += ["--read-data-subset", read_data_subset]
        self.unlock()
        done = self.run(*args, check=False)
        said = (done.stdout or b"").decode(errors="replace") + (done.stderr or b"").decode(
            errors="replace"
        )
        return CheckResult(ok=done.returncode == 0, detail=self.redact(said).strip())

    def forget(self, retention: Retention, *, tags: Sequence[str] = ()) -> list[str]:
        """Forget the snapshots ``retention`` does not keep (per tag set) and prune their
        data; the ids removed."""
        args = ["forget", "--json", "--prune", "--group-by", "tags", *retention.args()]
        for tag in tags:
            args += ["--tag", tag]
        self.unlock()
        out = self.run(*args).stdout or b""
        removed: list[str] = []
        # With --prune, restic prints the forget JSON then prune's text.
        first = out.split(b"\n", 1)[0]
        try:
            groups = json.loads(first) or []
        except json.JSONDecodeError:
            groups = []
        for group in groups:
            removed += [str(s["id"]) for s in group.get("remove") or []]
        return removed


def _json_lines(stream: IO[bytes]) -> Iterator[dict[str, Any]]:
    for raw in stream:
        line = raw.strip()
        if not line.startswith(b"{"):
            continue
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(message, dict):
            yield message


def _missing(said: str) -> bool:
    markers = (
        "Is there a repository at the following location?",
        "unable to open config file",
        "does not exist",
        "NoSuchBucket",
        "The specified bucket does not exist",
    )
    return any(m in said for m in markers)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _check_snapshot_id(snapshot: str) -> None:
    if snapshot != "latest" and not (
        4 <= len(snapshot) <= 64 and all(c in "0123456789abcdef" for c in snapshot)
    ):
        raise ValidationError(
            f"{snapshot!r} is not a backup id", hint="see `hangar backups list` for the ids"
        )


def check_subset(subset: str) -> str:
    """``subset`` if restic reads it as a part of the data (10%, 1/5); else ValidationError."""
    import re

    if not re.fullmatch(
        r"(100|[1-9][0-9]?)(\.[0-9]{1,2})?%|[1-9][0-9]{0,3}/[1-9][0-9]{0,3}", subset
    ):
        raise ValidationError(
            f"{subset!r} is not a data subset",
            hint="a percentage such as 10% or a part such as 1/5",
        )
    return subset
