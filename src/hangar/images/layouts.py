"""The control plane's image layouts: one content-addressed store per organization.

Machines run images that are either copied from a registry or uploaded. Both
end up as ``<root>/orgs/<org id>/sha256-<manifest hex>/``: an OCI layout whose
``index.json`` names exactly that manifest and whose blobs are exactly those
it needs, each verified against its digest. An organization names its images
by digest (``sha256:…``) and reaches only its own directory.

Nothing outside the store is ever read as a layout on a tenant's behalf:
``LayoutStore.require_inside`` refuses a path outside the store (or outside
a directory the operator listed in ``local_image_dirs``), and every file of a
layout is opened through ``safeio.open_regular``: no symlink is followed, and
FIFOs, devices and oversize files are refused.

An upload is a tar stream of an OCI layout. Only ``oci-layout``,
``index.json`` and ``blobs/sha256/<hex>`` regular files (and their directories)
may appear in it; a link, FIFO, device or any other name is refused, the
stream is capped in size and in time, and a blob that does not hash to its
name is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import IO

from hangar.errors import IntegrityError, NotFound, PayloadTooLarge, ValidationError
from hangar.images.oci import ImageRef, Manifest, read_manifest, receive_blob
from hangar.images.safeio import MAX_JSON_BLOB, digest_hex, open_regular

__all__ = ["LayoutStore", "is_digest_ref"]

_ORG_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DIGEST_REF = re.compile(r"^sha256:[0-9a-f]{64}$")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def is_digest_ref(text: str) -> bool:
    """``sha256:<64 hex>``: an image in the organization's own store."""
    return bool(_DIGEST_REF.fullmatch(text))


class _Capped:
    """A stream that refuses to yield more than ``limit`` bytes or to run past ``deadline``."""

    def __init__(self, stream: IO[bytes], limit: int, deadline: float) -> None:
        self._stream, self._limit, self._deadline, self.seen = stream, limit, deadline, 0

    def read(self, size: int = -1) -> bytes:
        if time.monotonic() > self._deadline:
            raise ValidationError("the image upload took too long", hint="upload a smaller image")
        chunk = self._stream.read(size if size >= 0 else 1 << 20)
        self.seen += len(chunk)
        if self.seen > self._limit:
            raise PayloadTooLarge(f"the image upload is larger than {self._limit} bytes")
        return chunk


class LayoutStore:
    """Per-organization image layouts under ``root``, named by manifest digest."""

    def __init__(
        self,
        root: Path,
        *,
        max_upload: int = 8 << 30,
        upload_seconds: float = 3600,
        extra_dirs: Sequence[Path] = (),
    ) -> None:
        self.root = root
        self.max_upload = max_upload
        self.upload_seconds = upload_seconds
        self.extra_dirs = tuple(extra_dirs)

    def org_dir(self, org_id: str) -> Path:
        if not _ORG_ID.fullmatch(org_id):
            raise ValidationError(f"malformed organization id {org_id[:80]!r}")
        directory = self.root / "orgs" / org_id
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return directory

    def layout(self, org_id: str, digest: str) -> Path:
        return self.org_dir(org_id) / f"sha256-{digest_hex(digest)}"

    def find(self, org_id: str, digest: str) -> ImageRef:
        """The organization's stored image ``digest``; NotFound unless it uploaded or copied it."""
        path = self.layout(org_id, digest)
        if not path.is_dir() or path.is_symlink():
            raise NotFound(
                f"no image {digest} in this organization",
                hint="upload it: hangar deploy --image ./LAYOUT",
            )
        return ImageRef("oci", path=path)

    def require_inside(self, ref: ImageRef, org_id: str | None = None) -> None:
        """Refuse a layout outside the operator's ``local_image_dirs`` and, with
        ``org_id``, outside that organization's own part of the store."""
        if ref.kind != "oci" or ref.path is None or not ref.path.is_absolute():
            raise ValidationError("images are read from the image store only")
        path = ref.path
        if ".." in path.parts:
            raise ValidationError("images are read from the image store only")
        own = (self.root / "orgs" / org_id,) if org_id is not None else ()
        for base in (*own, *self.extra_dirs):
            if path.is_relative_to(base) and path != base:
                _walk_nofollow(base, path.relative_to(base).parts)
                return
        raise ValidationError(
            f"images are not read from host paths such as {str(ref.path)[:200]!r}",
            hint="upload the layout (hangar deploy --image ./DIR), or copy it from a registry"
            " with docker://",
        )

    def receive(self, org_id: str, stream: IO[bytes], *, tag: str | None = None) -> Manifest:
        """Unpack an uploaded layout, verify it, and keep the manifest it names (or ``tag``)."""
        org = self.org_dir(org_id)
        work = Path(tempfile.mkdtemp(prefix=".upload-", dir=org))
        try:
            capped = _Capped(stream, self.max_upload, time.monotonic() + self.upload_seconds)
            try:
                with tarfile.open(fileobj=capped, mode="r|") as tar:  # type: ignore[call-overload]
                    for member in tar:
                        _receive_member(tar, member, work)
            except (tarfile.TarError, EOFError) as exc:
                raise ValidationError(f"the upload is not a tar of an OCI layout: {exc}") from exc
            return self.adopt(org_id, ImageRef("oci", path=work, tag=tag))
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def adopt(self, org_id: str, ref: ImageRef) -> Manifest:
        """Copy the manifest ``ref`` names, and only the blobs it needs, into the store."""
        assert ref.path is not None
        manifest = read_manifest(ref)
        target = self.layout(org_id, manifest.digest)
        if target.is_dir():
            return manifest
        staging = Path(tempfile.mkdtemp(prefix=".adopt-", dir=self.org_dir(org_id)))
        try:
            blobs = staging / "blobs" / "sha256"
            blobs.mkdir(parents=True)
            for digest, size in manifest.blobs().items():
                with open_regular(
                    ref.path, ["blobs", "sha256", digest_hex(digest)], max_size=max(size, 0)
                ) as source:
                    receive_blob(staging, digest, size, _chunks(source))
            descriptor = {
                "mediaType": manifest.media_type,
                "digest": manifest.digest,
                "size": manifest.size,
            }
            (staging / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
            (staging / "index.json").write_text(
                json.dumps({"schemaVersion": 2, "manifests": [descriptor]})
            )
            read_manifest(ImageRef("oci", path=staging))  # what we wrote reads back whole
            try:
                os.rename(staging, target)
            except OSError:
                if not target.is_dir():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return manifest


def _chunks(source: IO[bytes]) -> Iterator[bytes]:
    while chunk := source.read(1 << 20):
        yield chunk


def _walk_nofollow(base: Path, parts: Sequence[str]) -> None:
    """IntegrityError unless ``base/parts…`` are real directories (no symlink among them)."""
    try:
        fd = os.open(base, _DIR_FLAGS)
        try:
            for part in parts:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        finally:
            os.close(fd)
    except FileNotFoundError as exc:
        raise NotFound(f"no image layout at {base.joinpath(*parts)}") from exc
    except OSError as exc:
        raise IntegrityError(f"{base.joinpath(*parts)} is not a plain directory") from exc


_ALLOWED = re.compile(r"^(oci-layout|index\.json|blobs|blobs/sha256|blobs/sha256/[0-9a-f]{64})$")


def _receive_member(tar: tarfile.TarFile, member: tarfile.TarInfo, work: Path) -> None:
    name = str(PurePosixPath(member.name.removeprefix("./")))
    if name in (".", ""):
        return
    if not _ALLOWED.fullmatch(name):
        raise ValidationError(
            f"the upload holds {name[:200]!r}, which is not part of an OCI layout"
        )
    if member.isdir():
        if name.startswith("blobs/sha256/") or name in ("oci-layout", "index.json"):
            raise ValidationError(f"{name!r} must be a file, not a directory")
        return
    if not member.isreg():
        raise ValidationError(
            f"the upload's {name!r} is not a regular file (links, FIFOs and devices are refused)"
        )
    source = tar.extractfile(member)
    assert source is not None
    if name.startswith("blobs/"):
        receive_blob(work, "sha256:" + name.rsplit("/", 1)[1], member.size, _chunks(source))
        return
    if member.size > MAX_JSON_BLOB:
        raise ValidationError(f"the upload's {name} is larger than {MAX_JSON_BLOB} bytes")
    fd = os.open(work / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(source, out)
