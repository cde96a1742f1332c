"""Images named on the command line: local layouts are uploaded, never read by the server.

``PATH`` or ``oci:PATH[:TAG]`` is a layout on this machine: the CLI reads it
(the user's own files) and uploads the chosen manifest and the blobs it needs
as a tar stream; the server keeps it in the organization's store and the
deploy names it by digest. ``docker://REF`` and ``sha256:HEX`` pass through.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import typer

from hangar.cli.client import Client
from hangar.images.oci import ImageRef, Manifest, open_blob, parse_image_ref, read_manifest

__all__ = ["layout_tar", "server_image"]

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
UPLOAD_TIMEOUT = 3600.0


def server_image(
    api: Client, app: str, text: str, *, base: Path | None = None, quiet: bool = False
) -> str:
    """What to send as ``image``: a registry reference, or the digest of an upload.

    A relative layout path is taken from ``base``: the directory of the
    hangar.toml that names it, or (for --image) the current directory.
    """
    if text.startswith("docker://") or _DIGEST.fullmatch(text):
        return text
    ref = parse_image_ref(text)
    assert ref.path is not None
    layout = ref.path.expanduser()
    layout = (layout if layout.is_absolute() else (base or Path.cwd()) / layout).resolve()
    manifest = read_manifest(ImageRef("oci", path=layout, tag=ref.tag))
    if not quiet:
        typer.echo(f"Uploading {layout} ({manifest.digest[:19]}) to the server...", err=True)
    uploaded = api.request(
        "POST",
        f"/v1/apps/{app}/images",
        content=layout_tar(layout, manifest),
        headers={"content-type": "application/octet-stream"},
        timeout=UPLOAD_TIMEOUT,
    )
    return str(uploaded["image"])


class _Pipe(io.RawIOBase):
    """Collects what tarfile writes, for the generator to hand on in chunks."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.buffer += data
        return len(data)

    def take(self) -> bytes:
        out, self.buffer = bytes(self.buffer), bytearray()
        return out


def layout_tar(layout: Path, manifest: Manifest) -> Iterator[bytes]:
    """A tar of a layout holding just ``manifest`` and its blobs, produced as it is sent."""
    pipe = _Pipe()
    descriptor = {
        "mediaType": manifest.media_type,
        "digest": manifest.digest,
        "size": manifest.size,
    }
    small = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps({"schemaVersion": 2, "manifests": [descriptor]}).encode(),
    }
    with tarfile.open(fileobj=pipe, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, data in small.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            yield pipe.take()
        for digest, size in manifest.blobs().items():
            info = tarfile.TarInfo("blobs/sha256/" + digest.removeprefix("sha256:"))
            info.size = size
            with open_blob(layout, digest, size) as blob:
                tar.addfile(info, blob)
            yield pipe.take()
    yield pipe.take()
