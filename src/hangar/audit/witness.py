"""Witnesses: signed checkpoints leave the database as they are made.

A signed checkpoint kept only in the database proves nothing against whoever
can write the database: they delete the newest events together with the
checkpoints that name them, or a whole organization's chain, and what is
left verifies. A witness is a record of every checkpoint outside the
database, somewhere its owner cannot rewrite: an append-only file on another
path (``chattr +a``), or a syslog collector on another host. ``hangar audit
verify --witness FILE`` then holds the store to the newest checkpoint of each
chain the witness saw.

Each checkpoint is one line, canonical JSON tagged with ``WITNESS_TAG``::

    {"chain":"org_…","head_hash":"…","seq":200,"signature":"…","time":"…","witness":"hangar-audit-checkpoint/1"}

Drivers implement ``Witness`` and are chosen by URL scheme in the
``audit_witness`` setting:

    file:///var/log/hangar-witness/checkpoints.log   append-only file, fsynced
    syslog+udp://HOST:PORT                           RFC 5424 over UDP
    syslog+unix:///dev/log                           RFC 5424 to a local datagram socket

A witness is written after the transaction that made the checkpoint commits,
so it never holds a checkpoint the store rolled back. A witness that cannot
be written does not stop the change (the store already holds it): it is
logged as an error, and the next checkpoint of the chain, which covers
everything before it, is offered again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hangar.audit.chain import (
    Checkpoint,
    VerifyResult,
    canonical,
    verify_checkpoint,
)
from hangar.errors import ConfigError, HangarError, IntegrityError

__all__ = [
    "WITNESS_TAG",
    "FileWitness",
    "SyslogWitness",
    "Witness",
    "WitnessLine",
    "Witnesses",
    "check_witness",
    "parse_witness_file",
    "parse_witness_url",
    "record_line",
    "witness_for",
]

log = logging.getLogger("hangar.audit")

WITNESS_TAG = "hangar-audit-checkpoint/1"
SCHEMES = ("file", "syslog+udp", "syslog+unix")

# RFC 5424: facility 13 (log audit), severity 5 (notice).
SYSLOG_PRI = 13 * 8 + 5
SYSLOG_APP = "hangar"
SYSLOG_MSGID = "audit-checkpoint"


def record_line(cp: Checkpoint) -> str:
    """The witness line of a checkpoint (no newline)."""
    return canonical(
        {
            "witness": WITNESS_TAG,
            "chain": cp.chain,
            "seq": cp.seq,
            "head_hash": cp.head_hash,
            "time": cp.time,
            "signature": cp.signature,
        }
    ).decode()


class Witness(Protocol):
    """Somewhere checkpoints go as they are made; ``publish`` raises HangarError on failure."""

    @property
    def name(self) -> str: ...

    def publish(self, line: str) -> None: ...


@dataclass(frozen=True)
class Target:
    scheme: str
    path: Path | None = None
    host: str = ""
    port: int = 0


def parse_witness_url(url: str, *, data_dir: Path | None = None) -> Target:
    """Check one ``audit_witness`` URL; ValueError saying what is wrong.

    A file witness must be an absolute path outside ``data_dir``: a witness
    beside the database is rewritten by whoever rewrites the database.
    """
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(
            f"{url!r}: the witness must be one of {', '.join(s + ':' for s in SCHEMES)}"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: a witness URL takes no query or fragment")
    if parts.scheme in ("file", "syslog+unix"):
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{url!r}: write {parts.scheme}:///absolute/path")
        path = Path(parts.path)
        if not path.is_absolute() or ".." in path.parts or path == Path("/"):
            raise ValueError(f"{url!r}: the path must be absolute, without '..'")
        if parts.scheme == "file" and data_dir is not None:
            inside = data_dir.resolve()
            if path.resolve() == inside or inside in path.resolve().parents:
                raise ValueError(
                    f"{url!r}: the witness file is inside the data directory {data_dir}; "
                    "put it on another path whose owner cannot rewrite it"
                )
        return Target(parts.scheme, path=path)
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from None
    if not parts.hostname or port is None:
        raise ValueError(f"{url!r}: write syslog+udp://HOST:PORT")
    return Target(parts.scheme, host=parts.hostname, port=port)


class FileWitness:
    """An append-only file: every line written with one O_APPEND write, then fsynced.

    Make it append-only on the host (``chattr +a FILE``) so that not even root
    rewrites or truncates it without first lifting the flag, and keep it off
    the database's filesystem or ship it elsewhere.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def name(self) -> str:
        return f"file:{self.path}"

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise HangarError(f"cannot open the audit witness {self.path}: {exc.strerror}") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise HangarError(f"the audit witness {self.path} is not a regular file")
        return fd

    def check(self) -> None:
        """Open (creating) the file once, so a wrong path fails at start, not at a checkpoint."""
        try:
            os.close(self._open())
        except HangarError as exc:
            raise ConfigError(
                f"setting 'audit_witness': {exc.message}",
                hint="the directory must exist; the file may not be a link",
            ) from None

    def publish(self, line: str) -> None:
        data = (line + "\n").encode()
        fd = self._open()
        try:
            # One write: with O_APPEND the line lands whole at the end, even
            # with other writers; a short write is an error, not retried in pieces.
            if os.write(fd, data) != len(data):
                raise HangarError(f"short write to the audit witness {self.path}")
            os.fsync(fd)
        except OSError as exc:
            raise HangarError(
                f"cannot write the audit witness {self.path}: {exc.strerror}"
            ) from exc
        finally:
            os.close(fd)


class SyslogWitness:
    """RFC 5424 messages to a syslog collector (UDP) or the local syslog socket (unix datagram)."""

    def __init__(self, target: Target, *, hostname: str | None = None) -> None:
        self.target = target
        self.hostname = (hostname or socket.gethostname() or "-")[:255].replace(" ", "-")

    @property
    def name(self) -> str:
        if self.target.scheme == "syslog+unix":
            return f"syslog+unix:{self.target.path}"
        return f"syslog+udp:{self.target.host}:{self.target.port}"

    def message(self, line: str) -> bytes:
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        header = (
            f"<{SYSLOG_PRI}>1 {stamp} {self.hostname} {SYSLOG_APP} {os.getpid()} {SYSLOG_MSGID} -"
        )
        return f"{header} {line}".encode()

    def publish(self, line: str) -> None:
        data = self.message(line)
        try:
            if self.target.scheme == "syslog+unix":
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(2.0)
                    sock.connect(str(self.target.path))
                    sock.send(data)
                return
            infos = socket.getaddrinfo(self.target.host, self.target.port, type=socket.SOCK_DGRAM)
            family, kind, proto, _, addr = infos[0]
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(2.0)
                sock.sendto(data, addr)
        except OSError as exc:
            raise HangarError(f"cannot send to the audit witness {self.name}: {exc}") from exc


_DRIVERS: dict[str, Callable[[Target], Witness]] = {
    "file": lambda t: FileWitness(t.path or Path()),
    "syslog+udp": SyslogWitness,
    "syslog+unix": SyslogWitness,
}


def witness_for(url: str, *, data_dir: Path | None = None) -> Witness:
    """The driver for one ``audit_witness`` URL; ConfigError if the URL is wrong."""
    try:
        target = parse_witness_url(url, data_dir=data_dir)
    except ValueError as exc:
        raise ConfigError(f"setting 'audit_witness': {exc}") from None
    return _DRIVERS[target.scheme](target)


class Witnesses:
    """Every configured witness; publishing never raises (the store already committed)."""

    def __init__(self, witnesses: Sequence[Witness]) -> None:
        self.witnesses = list(witnesses)
        # Chains whose last checkpoint some witness missed: said once more when it succeeds.
        self.behind: set[tuple[str, str]] = set()

    @classmethod
    def from_urls(cls, urls: Iterable[str], *, data_dir: Path | None = None) -> Witnesses:
        found = [witness_for(u, data_dir=data_dir) for u in urls]
        for witness in found:
            if isinstance(witness, FileWitness):
                witness.check()
        return cls(found)

    def __bool__(self) -> bool:
        return bool(self.witnesses)

    def publish(self, checkpoints: Iterable[Checkpoint]) -> None:
        for cp in checkpoints:
            line = record_line(cp)
            for witness in self.witnesses:
                key = (witness.name, cp.chain)
                try:
                    witness.publish(line)
                except HangarError as exc:
                    self.behind.add(key)
                    log.error(
                        "audit witness %s missed the checkpoint of chain %s at event %d: %s",
                        witness.name,
                        cp.chain,
                        cp.seq,
                        exc.message,
                    )
                    continue
                if key in self.behind:
                    self.behind.discard(key)
                    log.warning(
                        "audit witness %s caught up on chain %s at event %d",
                        witness.name,
                        cp.chain,
                        cp.seq,
                    )


@dataclass(frozen=True)
class WitnessLine:
    """A checkpoint as a witness recorded it, and where (line number; 0 if unknown)."""

    checkpoint: Checkpoint
    line: int


def parse_witness_file(text: str) -> tuple[list[WitnessLine], list[tuple[int, str]]]:
    """The checkpoints in a witness file, or in a syslog file that received them.

    Lines without ``WITNESS_TAG`` (other programs' syslog lines) are skipped;
    lines with it that do not parse are returned as problems ``(line, why)``,
    since a damaged witness line is itself a sign of tampering.
    """
    found: list[WitnessLine] = []
    problems: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if WITNESS_TAG not in raw:
            continue
        start = raw.find("{")
        try:
            data = json.loads(raw[start:]) if start >= 0 else None
            if not isinstance(data, dict) or data.get("witness") != WITNESS_TAG:
                raise ValueError("not a checkpoint record")
            cp = Checkpoint(
                chain=_text(data, "chain"),
                seq=_number(data, "seq"),
                head_hash=_text(data, "head_hash"),
                time=_text(data, "time"),
                signature=_text(data, "signature"),
            )
        except (ValueError, TypeError) as exc:
            problems.append((number, f"unreadable checkpoint record ({exc})"))
            continue
        found.append(WitnessLine(cp, number))
    return found, problems


def _text(data: dict[str, object], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or len(value) > 256:
        raise ValueError(f"{key} is missing or malformed")
    return value


def _number(data: dict[str, object], key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{key} is missing or malformed")
    return value


def check_witness(
    text: str, public_key: Ed25519PublicKey, *, source: str = "witness"
) -> tuple[dict[str, list[Checkpoint]], list[VerifyResult]]:
    """The witnessed checkpoints whose signatures hold, by chain, and what is wrong.

    A line whose signature does not verify was forged or altered: it is
    reported (naming the line and the chain it claims), never believed.
    """
    lines, problems = parse_witness_file(text)
    by_chain: dict[str, list[Checkpoint]] = {}
    failures = [
        VerifyResult(source, False, 0, 0, None, f"{source} line {number}: {why}")
        for number, why in problems
    ]
    for item in lines:
        cp = item.checkpoint
        try:
            verify_checkpoint(public_key, cp)
        except IntegrityError:
            failures.append(
                VerifyResult(
                    cp.chain,
                    False,
                    0,
                    0,
                    cp.seq,
                    f"{source} line {item.line}: the checkpoint at event {cp.seq} has a bad "
                    "signature (forged or altered)",
                )
            )
            continue
        by_chain.setdefault(cp.chain, []).append(cp)
    return by_chain, failures
