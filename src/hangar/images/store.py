"""Unpacked images: one read-only root filesystem per manifest digest.

``ImageStore.pull`` resolves an image reference, verifies every blob, and
unpacks the layers once per digest into ``<root>/<digest>/rootfs``, which all
machines of that digest share read-only. Unpacking happens in a temporary
directory that is renamed into place only when complete, so a crash leaves no
half-made root filesystem behind, and a failed unpack leaves nothing at all.

What a layer may not do (each is an ``IntegrityError`` naming the entry):
write outside the root (``..``, absolute names, or through a symlink that
points out), hard-link to something outside it, be larger than the cap, hold
more entries than the cap, or take longer to unpack than the time limit.
Device nodes are skipped (the runtime provides ``/dev``) and set-user-ID and
set-group-ID bits are dropped. Files are owned by the machines' unprivileged
host range: image uid N becomes host uid ``uid_base + N``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from hangar.errors import ConfigError, IntegrityError, ValidationError
from hangar.images.oci import ImageConfig, ImageRef, Layer, Manifest, open_blob, read_manifest

__all__ = ["Image", "ImageStore", "require_traversable", "resolve_inside", "unpack_layer"]

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MAX_SYMLINKS = 40


@dataclass(frozen=True)
class Image:
    digest: str
    config: ImageConfig
    rootfs: Path


def _components(name: str) -> list[str]:
    """A tar entry's path as components; IntegrityError if it could escape."""
    path = PurePosixPath(name)
    if path.is_absolute():
        raise IntegrityError(f"layer entry {name!r} is an absolute path")
    parts = [p for p in path.parts if p not in ("", ".")]
    if ".." in parts:
        raise IntegrityError(f"layer entry {name!r} climbs out of the root")
    return parts


def resolve_inside(root: Path, parts: list[str], *, follow_last: bool = False) -> Path:
    """Join ``parts`` under ``root``, resolving symlinks as if ``root`` were ``/``.

    Like a chroot would: an absolute link target is taken from ``root``, and
    ``..`` never climbs above it. The result is always inside ``root``.
    """
    resolved: list[str] = []
    pending = list(parts)
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        last = not pending
        if (not last or follow_last) and candidate.is_symlink():
            hops += 1
            if hops > MAX_SYMLINKS:
                raise IntegrityError(f"too many symlinks resolving {'/'.join(parts)!r}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending = [p for p in PurePosixPath(target).parts if p != "/"] + pending
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.exists():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def unpack_layer(
    tar: tarfile.TarFile,
    root: Path,
    *,
    uid_base: int,
    id_range: int,
    budget: list[int],
    deadline: float = math.inf,
) -> None:
    """Apply one layer to ``root`` (see the module docstring for what is refused).

    ``budget`` holds the bytes and entries still allowed (``[bytes, entries]``
    or ``[bytes]``); past ``deadline`` (``time.monotonic()``) unpacking stops.
    """
    made_here: set[Path] = set()
    for member in tar:
        if time.monotonic() > deadline:
            raise IntegrityError("unpacking the image took longer than its time limit")
        if len(budget) > 1:
            budget[1] -= 1
            if budget[1] < 0:
                raise IntegrityError("the image has more entries than the unpack limit")
        parts = _components(member.name)
        if not parts:
            continue
        name = parts[-1]
        parent = resolve_inside(root, parts[:-1], follow_last=True)
        if name == OPAQUE:
            if parent.is_dir():
                for child in parent.iterdir():
                    if child not in made_here:
                        _remove(child)
            continue
        if name.startswith(WHITEOUT):
            _remove(parent / name[len(WHITEOUT) :])
            continue
        target = parent / name
        parent.mkdir(parents=True, exist_ok=True)
        if member.isdir():
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                _remove(target)
            target.mkdir(exist_ok=True)
        elif member.isreg():
            budget[0] -= member.size
            if budget[0] < 0:
                raise IntegrityError("image is larger than the unpack limit")
            _remove(target)
            source = tar.extractfile(member)
            assert source is not None
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
        elif member.issym():
            _remove(target)
            os.symlink(member.linkname, target)
        elif member.islnk():
            link_parts = _components(member.linkname)
            source_path = resolve_inside(root, link_parts[:-1], follow_last=True) / link_parts[-1]
            if source_path.is_symlink() or not source_path.is_file():
                raise IntegrityError(
                    f"layer entry {member.name!r} hard-links to {member.linkname!r}, "
                    "which is not a regular file in the image"
                )
            _remove(target)
            os.link(source_path, target)
        elif member.isfifo():
            _remove(target)
            os.mkfifo(target)
        else:
            continue  # device nodes and the like: the runtime provides /dev
        made_here.add(target)
        uid = uid_base + member.uid if 0 <= member.uid < id_range else uid_base + 65534
        gid = uid_base + member.gid if 0 <= member.gid < id_range else uid_base + 65534
        os.lchown(target, uid, gid)
        if not member.issym():
            mode = stat.S_IMODE(member.mode) & ~(stat.S_ISUID | stat.S_ISGID)
            os.chmod(target, mode)
            os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)


def require_traversable(path: Path) -> None:
    """ConfigError unless every directory above ``path`` lets others search it.

    A machine's init runs as an unprivileged host uid and must walk to its
    root filesystem; a 0700 ancestor makes every machine fail to start.
    """
    for directory in [path, *path.resolve().parents]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise ConfigError(
                f"{directory} is not searchable by others (mode {stat.S_IMODE(mode):04o}), so "
                f"machines cannot reach images under {path}",
                hint=f"chmod o+x {directory}, or keep Hangar's state elsewhere",
            )


class ImageStore:
    """Unpacked images under ``root``, keyed by manifest digest."""

    def __init__(
        self,
        root: Path,
        *,
        uid_base: int = 100000,
        id_range: int = 65536,
        max_bytes: int = 8 << 30,
        max_entries: int = 1_000_000,
        unpack_seconds: float = 1800,
    ) -> None:
        self.root = root
        self.uid_base = uid_base
        self.id_range = id_range
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.unpack_seconds = unpack_seconds
        root.mkdir(parents=True, exist_ok=True)
        # Search-only for others: machines' init (in their user namespace)
        # must traverse to their root filesystem; nobody may list it.
        os.chmod(root, 0o711)  # noqa: S103 - search-only, see above
        require_traversable(root)

    def _dir(self, digest: str) -> Path:
        return self.root / digest.replace(":", "-")

    def get(self, digest: str) -> Image | None:
        directory = self._dir(digest)
        meta = directory / "image.json"
        if not meta.exists():
            return None
        config = ImageConfig(**json.loads(meta.read_text())["config"])
        return Image(digest, config, directory / "rootfs")

    def pull(self, ref: ImageRef) -> Image:
        """The unpacked image for ``ref``, unpacking it if this digest is new."""
        if ref.kind != "oci":
            raise ValidationError(f"copy {ref} to a local layout first")
        manifest = read_manifest(ref)
        existing = self.get(manifest.digest)
        if existing is not None:
            return existing
        return self._unpack(manifest, ref)

    def _unpack(self, manifest: Manifest, ref: ImageRef) -> Image:
        assert ref.path is not None
        work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=self.root))
        try:
            rootfs = work / "rootfs"
            rootfs.mkdir()
            budget = [self.max_bytes, self.max_entries]
            deadline = time.monotonic() + self.unpack_seconds
            for layer in manifest.layers:
                self._apply(ref.path, layer, rootfs, budget, deadline)
            os.chown(rootfs, self.uid_base, self.uid_base)
            os.chmod(rootfs, 0o755)  # noqa: S103 - a root filesystem, read-only to machines
            (work / "image.json").write_text(
                json.dumps({"digest": manifest.digest, "config": asdict(manifest.config)})
            )
            os.chmod(work, 0o711)  # noqa: S103 - search-only
            target = self._dir(manifest.digest)
            try:
                os.rename(work, target)
            except OSError:
                # Another pull of the same digest finished first; use it.
                shutil.rmtree(work, ignore_errors=True)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        image = self.get(manifest.digest)
        assert image is not None
        return image

    def _apply(
        self, layout: Path, layer: Layer, rootfs: Path, budget: list[int], deadline: float
    ) -> None:
        mode = "r|gz" if layer.compression == "gzip" else "r|"
        with open_blob(layout, layer.digest, layer.size) as blob:
            try:
                with tarfile.open(fileobj=blob, mode=mode) as tar:  # type: ignore[call-overload]
                    unpack_layer(
                        tar,
                        rootfs,
                        uid_base=self.uid_base,
                        id_range=self.id_range,
                        budget=budget,
                        deadline=deadline,
                    )
                    blob.read()  # the rest of the stream, so the digest is checked
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise IntegrityError(f"layer {layer.digest} is corrupt: {exc}") from exc

    def remove(self, digest: str) -> None:
        shutil.rmtree(self._dir(digest), ignore_errors=True)
