"""Images as the control plane keeps them: per organization, by digest.

A tenant names an image by registry reference or by the digest of one it
uploaded; the control plane never opens a host path on a tenant's behalf
(``hangar.images.layouts`` says what is refused and why). An image that is
malformed or corrupt is the sender's error (HTTP 422), never the server's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from hangar.audit.log import AuditContext
from hangar.controlplane.changes import change
from hangar.controlplane.state import ControlPlane
from hangar.errors import IntegrityError, ValidationError
from hangar.images.layouts import LayoutStore
from hangar.images.oci import ImageRef, Manifest, parse_image_ref
from hangar.images.registry import resolve
from hangar.store.tables import App

__all__ = ["layout_store", "machine_layout", "resolve_image", "upload_image"]


def layout_store(cp: ControlPlane) -> LayoutStore:
    settings = cp.settings
    return LayoutStore(
        cp.data_dir / "images",
        max_upload=settings.max_image_upload_bytes,
        upload_seconds=settings.image_upload_seconds,
        extra_dirs=settings.local_image_dirs,
    )


@contextmanager
def resolve_image(cp: ControlPlane, org_id: str, text: str) -> Iterator[tuple[str, str]]:
    """The layout and manifest digest of what ``text`` names for organization ``org_id``."""
    settings = cp.settings
    try:
        with resolve(
            text,
            layout_store(cp),
            org_id,
            insecure=settings.insecure_registries,
            allowed=settings.allowed_registries,
        ) as found:
            yield found
    except IntegrityError as exc:
        raise ValidationError(f"the image is unusable: {exc.message}") from exc


def upload_image(
    cp: ControlPlane, ctx: AuditContext, app: App, stream: IO[bytes], *, tag: str | None
) -> Manifest:
    """Keep an uploaded OCI layout (a tar stream) in the app's organization's store."""
    try:
        manifest = layout_store(cp).receive(app.org_id, stream, tag=tag)
    except IntegrityError as exc:
        raise ValidationError(f"the uploaded image is unusable: {exc.message}") from exc
    with change(cp, ctx, org_id=app.org_id, action="image.upload", target=app.name, wake=False) as (
        _,
        event,
    ):
        event.detail = {"digest": manifest.digest, "layers": len(manifest.layers)}
    return manifest


def machine_layout(cp: ControlPlane, org_id: str, image: str) -> ImageRef:
    """A machine's image as a layout in its organization's store; refused anywhere else.

    Releases made before images were kept per organization may name another
    path: those must be deployed again.
    """
    try:
        ref = parse_image_ref(image)
        layout_store(cp).require_inside(ref, org_id)
    except (ValidationError, IntegrityError) as exc:
        raise ValidationError(
            f"the machine's image is not in its organization's image store: {exc.message}",
            hint="deploy the app again to upload or copy its image",
        ) from exc
    return ref
