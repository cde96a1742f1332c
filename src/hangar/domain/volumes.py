"""Volumes (pure): sizes, names, where a machine may mount one, and which volume it gets.

A volume lives on one host and is held by at most one machine at a time.
As on Fly.io, an app's volumes may share a name: each machine of the app
whose ``[[mounts]]`` names ``source = "data"`` holds its own volume called
``data``, and runs on that volume's host. A new machine takes a free one
(``pick_free``); with none free the change is refused before anything is
made, with a hint to create another.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass

from hangar.errors import Conflict, ValidationError

__all__ = [
    "MAX_SIZE_MB",
    "MAX_VOLUMES_PER_APP",
    "MAX_VOLUMES_PER_ORG",
    "MIN_SIZE_MB",
    "FreeVolume",
    "check_destination",
    "check_size",
    "check_volume_name",
    "format_size",
    "parse_size",
    "pick_free",
]

MIN_SIZE_MB = 64
MAX_SIZE_MB = 500 * 1024  # 500 GB, as Fly.io's largest volume
# Volumes not destroyed: each is a loop device and a mount on its host.
MAX_VOLUMES_PER_APP = 64
MAX_VOLUMES_PER_ORG = 256
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,29}$")
_SIZE = re.compile(r"^\s*([0-9]{1,7})\s*(mb|mib|m|gb|gib|g)?\s*$", re.IGNORECASE | re.ASCII)
_DEST = re.compile(r"^/[A-Za-z0-9._/@+-]{1,511}$")
# Paths a machine's runtime owns: its own /proc, /sys, /dev, the tmpfs it
# gives /tmp and /run (where secrets as files go), the /etc files it writes.
_RUNTIME_TREES = ("/proc", "/sys", "/dev", "/tmp", "/run")  # noqa: S108 - guest paths
_RUNTIME_FILES = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")
_SYSTEM_DIRS = ("/", "/bin", "/sbin", "/lib", "/lib64", "/usr", "/etc", "/boot")


def check_volume_name(name: str) -> str:
    """``name`` if it is a volume name (as ``[[mounts]] source`` names one)."""
    if not _NAME.fullmatch(name):
        raise ValidationError(
            f"bad volume name {name!r}",
            hint="a lowercase letter, then up to 29 lowercase letters, digits or _",
        )
    return name


def parse_size(text: str) -> int:
    """A size in MB from ``10``, ``10gb``, ``512mb`` (a bare number is GB, as on Fly.io)."""
    found = _SIZE.fullmatch(text)
    if not found:
        raise ValidationError(
            f"bad volume size {text!r}", hint="say it as 1gb, 10gb or 512mb (a number alone is GB)"
        )
    number, unit = int(found.group(1)), (found.group(2) or "gb").lower()
    return check_size(number if unit.startswith("m") else number * 1024)


def check_size(size: int) -> int:
    """``size`` (MB) if a volume may be that large; else ValidationError."""
    if not MIN_SIZE_MB <= size <= MAX_SIZE_MB:
        raise ValidationError(
            f"volume size {format_size(size)} is out of range",
            hint=f"from {MIN_SIZE_MB}mb to {MAX_SIZE_MB // 1024}gb",
        )
    return size


def format_size(size_mb: int) -> str:
    return f"{size_mb // 1024}gb" if size_mb % 1024 == 0 else f"{size_mb}mb"


def check_destination(path: str) -> str:
    """``path`` if a volume may be mounted there in a machine; else ValidationError.

    Absolute and normalized (no ``.``, ``..``, ``//`` or trailing ``/``);
    never under /proc, /sys, /dev, nor over a path the runtime owns, nor over a
    system directory the image's programs need.
    """
    if not _DEST.fullmatch(path):
        raise ValidationError(
            f"mount destination {path!r} is not an absolute path of plain characters",
            hint='say it as destination = "/data"',
        )
    # normpath keeps a leading "//" (POSIX lets it mean something else): "//proc"
    # would pass every check below, and runc mounts it on /proc.
    if (
        posixpath.normpath(path) != path
        or "//" in path
        or "/./" in path + "/"
        or "/../" in path + "/"
    ):
        raise ValidationError(
            f"mount destination {path!r} is not normalized",
            hint=f"write it as {'/' + posixpath.normpath(path).lstrip('/')!r}",
        )
    for tree in _RUNTIME_TREES:
        if path == tree or path.startswith(tree + "/"):
            raise ValidationError(
                f"mount destination {path!r} is under {tree}, which the machine's runtime owns",
                hint='mount volumes on a directory of their own, such as "/data"',
            )
    if path in _RUNTIME_FILES or path in _SYSTEM_DIRS:
        raise ValidationError(
            f"mount destination {path!r} would hide a path the machine needs",
            hint='mount volumes on a directory of their own, such as "/data"',
        )
    return path


@dataclass(frozen=True)
class FreeVolume:
    """A volume as ``pick_free`` sees it."""

    id: str
    name: str
    host_id: str
    held_by: str | None  # the machine holding it; None: free
    created: float  # for a stable order: the oldest free one first


def pick_free(volumes: Iterable[FreeVolume], name: str, app: str) -> FreeVolume:
    """The volume named ``name`` a new machine takes; Conflict if none is free."""
    named = [v for v in volumes if v.name == name]
    free = [v for v in named if v.held_by is None]
    if not free:
        have = (
            f"its {len(named)} volume(s) named {name!r} are all held"
            if named
            else (f"it has no volume named {name!r}")
        )
        raise Conflict(
            f"app {app} needs a free volume {name!r} for a new machine, but {have}: "
            "each machine holds its own volume",
            hint=f"create one: `hangar volumes create {name} --app {app} --size 1gb`",
        )
    return min(free, key=lambda v: (v.created, v.id))
