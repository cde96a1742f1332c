"""Uploading a local OCI layout through the API, as `hangar deploy --image ./DIR` does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hangar.cli.images import layout_tar
from hangar.images.oci import ImageRef, read_manifest


def upload_layout(
    api: Any, headers: dict[str, str], app: str, layout: Path, tag: str | None = None
) -> str:
    """Upload ``layout`` (its ``tag``) for ``app``; the ``sha256:…`` to deploy."""
    manifest = read_manifest(ImageRef("oci", path=layout, tag=tag))
    body = b"".join(layout_tar(layout, manifest))
    r = api.post(
        f"/v1/apps/{app}/images",
        headers={**headers, "content-type": "application/octet-stream"},
        content=body,
    )
    assert r.status_code == 201, r.text
    assert r.json()["digest"] == manifest.digest
    return str(r.json()["image"])
