"""Images from registries, copied with skopeo into local OCI layouts.

``resolve`` turns what a person names (a layout path, ``oci:PATH:TAG`` or
``docker://REF``) into a layout on this host's disk and the manifest digest
that pins it, copying a registry image first.
"""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hangar import hostcmd
from hangar.errors import CommandError, ConfigError, UpstreamError, ValidationError
from hangar.images.oci import ImageRef, parse_image_ref, read_manifest

__all__ = ["copy_from_registry", "local_image", "resolve"]

# A registry reference: [host[:port]/]path[:tag][@sha256:digest], as Docker spells them.
_REFERENCE = re.compile(
    r"^(?:[a-z0-9]+(?:[.-][a-z0-9]+)*(?::[0-9]{1,5})?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)


def copy_from_registry(
    ref: ImageRef, into: Path, *, insecure: Sequence[str] = (), timeout: float = 1800
) -> ImageRef:
    """Copy ``docker://…`` into a new local OCI layout with skopeo; the layout's ref.

    ``insecure`` names registries (``host:port``) reached without TLS
    verification: test registries on loopback, never a production one.
    """
    assert ref.kind == "docker"
    if not _REFERENCE.fullmatch(ref.reference):
        raise ValidationError(f"{ref} is not a registry reference", hint="docker://HOST/NAME:TAG")
    registry = ref.reference.split("/", 1)[0]
    argv = ["skopeo", "copy", "--quiet"]
    if registry in insecure:
        argv.append("--src-tls-verify=false")
    into.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        hostcmd.run([*argv, str(ref), f"oci:{into}:latest"], timeout=timeout)
    except CommandError as exc:
        shutil.rmtree(into, ignore_errors=True)
        if exc.returncode == 127:
            raise ConfigError("skopeo is not installed", hint="apt-get install skopeo") from exc
        raise UpstreamError(f"copying {ref} failed: {exc.stderr.strip()[-500:]}") from exc
    return ImageRef("oci", path=into, tag="latest")


@contextmanager
def resolve(
    text: str, images_dir: Path, *, insecure: Sequence[str] = ()
) -> Iterator[tuple[str, str]]:
    """An image as the layout machines run it from, and its manifest digest (the pin).

    A ``docker://`` reference is copied with skopeo into a new layout under
    ``images_dir``; if the block raises, the copy is removed again. Reading
    the manifest now fails with the reason once, not on every machine.
    """
    ref = parse_image_ref(text)
    copied: Path | None = None
    if ref.kind == "docker":
        name = re.sub(r"[^a-z0-9.-]+", "_", ref.reference.lower())[:80]
        copied = images_dir / f"{name}-{secrets.token_hex(4)}"
        ref = copy_from_registry(ref, copied, insecure=insecure)
    elif ref.path is None or not ref.path.is_absolute():
        raise ValidationError("the image path must be absolute on the server")
    try:
        yield str(ref), read_manifest(ref).digest
    except BaseException:
        if copied is not None:
            shutil.rmtree(copied, ignore_errors=True)
        raise


def local_image(text: str) -> tuple[str, str]:
    """An absolute ``oci:`` layout already on this host, and its manifest digest."""
    ref = parse_image_ref(text)
    if ref.kind != "oci" or ref.path is None or not ref.path.is_absolute():
        raise ValidationError("give a one-off machine's new image as an absolute oci: path")
    return str(ref), read_manifest(ref).digest
