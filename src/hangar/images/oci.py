"""OCI image layouts on disk: read them (verifying every blob) and write them.

Hangar reads images as OCI image layouts (``oci-layout``, ``index.json``,
``blobs/sha256/…``). Every blob read is checked against its digest and size,
so a corrupt or substituted layer is an error, never a machine.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from hangar.errors import IntegrityError, NotFound, ValidationError
from hangar.images.safeio import (
    MAX_BLOB,
    MAX_JSON_BLOB,
    VerifyingReader,
    digest_hex,
    open_regular,
    read_small,
)

__all__ = [
    "ImageConfig",
    "ImageRef",
    "Layer",
    "Manifest",
    "build_layout",
    "open_blob",
    "parse_image_ref",
    "read_manifest",
    "receive_blob",
    "write_index",
]

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
MANIFEST_TYPES = {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
}
INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "tar",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "tar",
}
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class ImageRef:
    """Where an image comes from: an OCI layout on disk, or a registry (copied with skopeo)."""

    kind: str  # "oci" or "docker"
    path: Path | None = None
    tag: str | None = None
    reference: str = ""

    def __str__(self) -> str:
        if self.kind == "docker":
            return f"docker://{self.reference}"
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")


def parse_image_ref(text: str) -> ImageRef:
    """``PATH``, ``oci:PATH[:TAG]`` or ``docker://REF``."""
    if not text:
        raise ValidationError("no image given", hint="--image PATH, oci:PATH:TAG or docker://REF")
    if text.startswith("docker://"):
        reference = text.removeprefix("docker://")
        if not reference:
            raise ValidationError(f"image {text!r} names no repository")
        return ImageRef("docker", reference=reference)
    body = text.removeprefix("oci:")
    tag: str | None = None
    if text.startswith("oci:") and ":" in body:
        body, tag = body.rsplit(":", 1)
        if not tag:
            raise ValidationError(f"image {text!r} has an empty tag")
    return ImageRef("oci", path=Path(body), tag=tag)


@dataclass(frozen=True)
class ImageConfig:
    """What the image says about how to run it."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    working_dir: str = "/"
    user: str = ""
    exposed_ports: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageConfig:
        """The run settings of an image config; IntegrityError if a field has the wrong type."""
        cfg = data.get("config") or {}
        if not isinstance(cfg, dict):
            raise IntegrityError("the image config's config is not an object")

        def strings(key: str) -> list[str]:
            value = cfg.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise IntegrityError(f"the image config's {key} is not a list of strings")
            return list(value)

        def string(key: str, default: str) -> str:
            value = cfg.get(key) or default
            if not isinstance(value, str):
                raise IntegrityError(f"the image config's {key} is not a string")
            return value

        ports = cfg.get("ExposedPorts") or {}
        if not isinstance(ports, dict):
            raise IntegrityError("the image config's ExposedPorts is not an object")
        return cls(
            entrypoint=strings("Entrypoint"),
            cmd=strings("Cmd"),
            env=strings("Env"),
            working_dir=string("WorkingDir", "/"),
            user=string("User", ""),
            exposed_ports=sorted(str(p) for p in ports),
        )


@dataclass(frozen=True)
class Layer:
    digest: str
    size: int
    compression: str


@dataclass(frozen=True)
class Manifest:
    digest: str
    config: ImageConfig
    layers: list[Layer]
    media_type: str = MANIFEST_MEDIA_TYPE
    size: int = -1
    config_digest: str = ""
    config_size: int = -1

    def blobs(self) -> dict[str, int]:
        """Every blob this manifest needs, digest → size (the manifest itself included)."""
        found = {self.digest: self.size, self.config_digest: self.config_size}
        found.update((layer.digest, layer.size) for layer in self.layers)
        return found


def _blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest_hex(digest)


@contextmanager
def open_blob(layout: Path, digest: str, size: int | None = None) -> Iterator[IO[bytes]]:
    """A blob of ``layout``, read without following links, checked against ``digest``."""
    if size is not None and not 0 <= size <= MAX_BLOB:
        raise IntegrityError(f"blob {digest[:80]} has an impossible size {size}")
    parts = ["blobs", "sha256", digest_hex(digest)]
    try:
        handle = open_regular(layout, parts, max_size=MAX_BLOB if size is None else size)
    except NotFound as exc:
        raise IntegrityError(f"image layout {layout} lacks blob {digest}") from exc
    with handle:
        yield io.BufferedReader(VerifyingReader(handle, digest, size))


def _read_json_blob(layout: Path, digest: str, size: int | None) -> dict[str, Any]:
    if size is not None and size > MAX_JSON_BLOB:
        raise IntegrityError(f"blob {digest} is too large for a manifest or config")
    with open_blob(layout, digest, size) as handle:
        data = handle.read(MAX_JSON_BLOB + 1)
        handle.read()  # reach EOF so the digest is checked
    try:
        parsed = json.loads(data)
    except ValueError as exc:
        raise IntegrityError(f"blob {digest} is not JSON") from exc
    if not isinstance(parsed, dict):
        raise IntegrityError(f"blob {digest} is not a JSON object")
    return parsed


def _tag(descriptor: Mapping[str, Any]) -> str:
    annotations = descriptor.get("annotations")
    name = annotations.get(REF_NAME) if isinstance(annotations, dict) else None
    return name if isinstance(name, str) else ""


def _objects(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _platform(descriptor: Mapping[str, Any]) -> Mapping[str, Any]:
    platform = descriptor.get("platform")
    return platform if isinstance(platform, dict) else {}


def _descriptor(value: Mapping[str, Any], ref: ImageRef) -> tuple[str, str, int]:
    """A descriptor's media type, digest and size; IntegrityError unless well-formed."""
    media, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(digest, str) or type(size) is not int or not 0 <= size <= MAX_BLOB:
        raise IntegrityError(f"image {ref}: a descriptor lacks a digest or a valid size")
    digest_hex(digest)
    return (media if isinstance(media, str) else ""), digest, size


def _pick(index: Mapping[str, Any], tag: str | None, where: str) -> Mapping[str, Any]:
    manifests = _objects(index.get("manifests"))
    if tag is not None:
        tagged = [m for m in manifests if _tag(m) == tag]
        if not tagged:
            names = sorted({_tag(m) for m in manifests})
            known = ", ".join(n for n in names if n) or "none"
            raise NotFound(f"image {where} has no tag {tag!r} (tags: {known})")
        return tagged[0]
    if len(manifests) != 1:
        raise ValidationError(
            f"image {where} holds {len(manifests)} manifests: name a tag",
            hint=f"use oci:{where}:TAG",
        )
    return manifests[0]


def read_manifest(ref: ImageRef) -> Manifest:
    """Resolve ``ref`` to a manifest in its layout, verifying what it reads."""
    assert ref.kind == "oci" and ref.path is not None
    layout = ref.path
    try:
        marker = json.loads(read_small(layout, "oci-layout"))
    except NotFound as exc:
        raise NotFound(
            f"{layout} is not an OCI image layout (no oci-layout file)",
            hint="build one with examples/hello/build.py, or copy with skopeo",
        ) from exc
    except ValueError as exc:
        raise IntegrityError(f"{layout}/oci-layout is not JSON") from exc
    version = marker.get("imageLayoutVersion") if isinstance(marker, dict) else None
    if version != "1.0.0":
        raise ValidationError(f"{layout}: unsupported image layout version {version!r}")
    try:
        index = json.loads(read_small(layout, "index.json"))
    except (NotFound, ValueError) as exc:
        raise IntegrityError(f"{layout}/index.json is missing or not JSON") from exc
    if not isinstance(index, dict):
        raise IntegrityError(f"{layout}/index.json is not a JSON object")
    descriptor = _descriptor(_pick(index, ref.tag, str(layout)), ref)
    for _ in range(4):  # nested indexes, as multi-platform images have
        media, digest, size = descriptor
        body = _read_json_blob(layout, digest, size)
        if media in INDEX_TYPES:
            platforms = [
                m
                for m in _objects(body.get("manifests"))
                if _platform(m).get("architecture") in (None, "amd64")
                and _platform(m).get("os") in (None, "linux")
            ]
            if not platforms:
                raise NotFound(f"image {ref} has no linux/amd64 manifest")
            descriptor = _descriptor(platforms[0], ref)
            continue
        if media not in MANIFEST_TYPES and body.get("mediaType") not in MANIFEST_TYPES:
            raise ValidationError(f"image {ref}: unsupported manifest type {media!r}")
        raw_config = body.get("config")
        _, config_digest, config_size = _descriptor(
            raw_config if isinstance(raw_config, dict) else {}, ref
        )
        config = _read_json_blob(layout, config_digest, config_size)
        layers = []
        raw_layers = body.get("layers") or []
        if not isinstance(raw_layers, list):
            raise IntegrityError(f"image {ref}: its manifest's layers are not a list")
        for layer in raw_layers:
            layer_media, layer_digest, layer_size = _descriptor(
                layer if isinstance(layer, dict) else {}, ref
            )
            compression = LAYER_TYPES.get(layer_media)
            if compression is None:
                raise ValidationError(f"image {ref}: unsupported layer type {layer_media!r}")
            layers.append(Layer(layer_digest, layer_size, compression))
        return Manifest(
            digest,
            ImageConfig.from_json(config),
            layers,
            media_type=str(media or body.get("mediaType")),
            size=size,
            config_digest=config_digest,
            config_size=config_size,
        )
    raise ValidationError(f"image {ref}: indexes nested too deeply")


# Writing layouts: for the example app and for tests.


def _write_blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def layer_tar(entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A gzip-compressed tar of ``entries`` (TarInfo, or TarInfo with file content)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            if isinstance(entry, tuple):
                info, content = entry
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                tar.addfile(entry)
    return gzip.compress(raw.getvalue(), mtime=0)


def build_layout(
    layout: Path,
    layers: list[bytes],
    *,
    tag: str = "latest",
    config: Mapping[str, Any] | None = None,
) -> str:
    """Write an OCI layout with gzip ``layers``; returns the manifest digest."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    diff_ids = ["sha256:" + hashlib.sha256(gzip.decompress(b)).hexdigest() for b in layers]
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": dict(config or {}),
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_desc = _write_blob(layout, json.dumps(image_config).encode())
    layer_descs = [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_write_blob(layout, b)}
        for b in layers
    ]
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
        "layers": layer_descs,
    }
    manifest_desc = _write_blob(layout, json.dumps(manifest).encode())
    index_path = layout / "index.json"
    old: list[dict[str, Any]] = (
        json.loads(index_path.read_text())["manifests"] if index_path.exists() else []
    )
    manifests = [m for m in old if (m.get("annotations") or {}).get(REF_NAME) != tag]
    manifests.append(
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            **manifest_desc,
            "annotations": {REF_NAME: tag},
        }
    )
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))
    os.replace(tmp, index_path)
    return str(manifest_desc["digest"])


def receive_blob(layout: Path, digest: str, size: int, chunks: Iterable[bytes]) -> None:
    """Write a blob that arrives in ``chunks`` into ``layout``, checking size and digest.

    The blob appears under its name only once it is whole and verified.
    """
    target = _blob_path(layout, digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return
    hasher = hashlib.sha256()
    written = 0
    tmp = target.with_name(target.name + ".partial")
    try:
        with open(tmp, "wb") as handle:
            for chunk in chunks:
                written += len(chunk)
                if size >= 0 and written > size:
                    raise IntegrityError(f"blob {digest} is larger than its {size} bytes")
                hasher.update(chunk)
                handle.write(chunk)
        if size >= 0 and written != size:
            raise IntegrityError(f"blob {digest} has {written} bytes, not {size}")
        if "sha256:" + hasher.hexdigest() != digest:
            raise IntegrityError(f"blob {digest} does not match its digest")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_index(layout: Path, manifest: Mapping[str, Any]) -> None:
    """Make ``layout`` an image layout whose only manifest is ``manifest`` (a descriptor)."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))
