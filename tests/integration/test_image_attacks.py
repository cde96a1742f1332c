"""A tenant tries to make the server read host files through images.

Each attempt goes through the public API as a member of an organization
would send it: host paths named as images, layouts whose files are symlinks
or FIFOs, hostile uploads, and another organization's image. None may open a
host file, hang, or answer 5xx.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from hangar.api.app import create_app
from hangar.controlplane.images import machine_layout
from hangar.controlplane.state import ControlPlane
from hangar.errors import ValidationError
from hangar.images.oci import build_layout, layer_tar
from tests.conftest import Installation, bearer, make_installation, mint_token
from tests.uploads import upload_layout

CONFIG = 'app = "web"\n'
HANG = 60.0  # generous: a request that opened a FIFO would never return at all


def _bounded(call: Callable[[], Any]) -> Any:
    """``call()``, failing the test (not hanging it) if it never returns."""
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(call()), daemon=True)
    worker.start()
    worker.join(HANG)
    assert result, "the request hung: the server blocked on what the image named"
    return result[0]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[TestClient, Installation, ControlPlane, Path]]:
    allowed = tmp_path / "operator-images"
    allowed.mkdir()
    inst = make_installation(tmp_path / "data", local_image_dirs=[allowed])
    cp = ControlPlane.open(inst.settings)
    try:
        with TestClient(create_app(cp), raise_server_exceptions=False) as api:
            assert (
                api.post("/v1/apps", headers=inst.headers, json={"name": "web"}).status_code == 201
            )
            yield api, inst, cp, allowed
    finally:
        cp.close()


def _deploy(api: TestClient, h: dict[str, str], image: str) -> Any:
    return _bounded(
        lambda: api.post(
            "/v1/apps/web/releases", headers=h, json={"image": image, "config": CONFIG}
        )
    )


def test_host_paths_are_never_opened(world: Any, tmp_path: Path) -> None:
    api, inst, _, _ = world
    data = inst.settings.data_dir
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for image in (
        "oci:/etc/passwd",
        "/etc/passwd",
        "oci:/dev/null",
        "oci:/dev/zero:latest",
        f"oci:{data / 'kek.key'}",
        f"oci:{data}",
        f"oci:{data / 'images'}",
        f"oci:{fifo}",
        "oci:/proc/self/environ",
        "oci:etc/passwd",
        "oci:../../etc",
    ):
        r = _deploy(api, inst.headers, image)
        assert r.status_code == 422, (image, r.text)
        assert "host paths" in r.text or "neither a registry reference" in r.text, r.text
    assert api.get("/v1/apps/web/releases", headers=inst.headers).json() == []


def _layout(where: Path) -> Path:
    build_layout(where, [layer_tar([])])
    return where


def _blob_names(layout: Path) -> list[Path]:
    return sorted((layout / "blobs" / "sha256").iterdir())


def test_layouts_in_an_operator_directory_are_read_without_following_links(world: Any) -> None:
    api, inst, _, allowed = world
    h = inst.headers
    good = _layout(allowed / "good")
    assert _deploy(api, h, f"oci:{good}").status_code == 201

    # index.json a symlink to a host file
    linked_index = _layout(allowed / "linked-index")
    (linked_index / "index.json").unlink()
    (linked_index / "index.json").symlink_to("/etc/hostname")
    # a blob a symlink (to a host file, and to a blob that exists)
    linked_blob = _layout(allowed / "linked-blob")
    for blob in _blob_names(linked_blob):
        blob.unlink()
        blob.symlink_to("/etc/passwd")
    # the blobs directory a symlink
    linked_dir = _layout(allowed / "linked-dir")
    os.rename(linked_dir / "blobs", allowed / "elsewhere")
    (linked_dir / "blobs").symlink_to(allowed / "elsewhere")
    # the layout itself a symlink out
    (allowed / "to-etc").symlink_to("/etc")
    # FIFOs in place of the marker, the index and a blob
    fifo_marker = _layout(allowed / "fifo-marker")
    (fifo_marker / "oci-layout").unlink()
    os.mkfifo(fifo_marker / "oci-layout")
    fifo_index = _layout(allowed / "fifo-index")
    (fifo_index / "index.json").unlink()
    os.mkfifo(fifo_index / "index.json")
    fifo_blob = _layout(allowed / "fifo-blob")
    for blob in _blob_names(fifo_blob):
        blob.unlink()
        os.mkfifo(blob)
    # an index larger than any index may be
    huge = _layout(allowed / "huge-index")
    (huge / "index.json").write_bytes(b" " * (5 << 20))

    for name in (
        "linked-index",
        "linked-blob",
        "linked-dir",
        "to-etc",
        "fifo-marker",
        "fifo-index",
        "fifo-blob",
        "huge-index",
    ):
        # Deployed 5 times each, as an attacker repeats: no request may hang.
        for _ in range(5):
            r = _deploy(api, h, f"oci:{allowed / name}")
            assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
    escape = _deploy(api, h, f"oci:{allowed}/../data/kek.key")
    assert escape.status_code == 422, escape.text


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return raw.getvalue()


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def _upload(api: TestClient, h: dict[str, str], body: bytes) -> Any:
    return _bounded(
        lambda: api.post(
            "/v1/apps/web/images",
            headers={**h, "content-type": "application/octet-stream"},
            content=body,
        )
    )


def test_hostile_uploads_are_refused(world: Any, tmp_path: Path) -> None:
    api, inst, _, _ = world
    h = inst.headers
    marker = (_entry("oci-layout"), json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
    zero = "0" * 64
    attempts = {
        "symlinked index": _tar(
            marker, (_entry("index.json", tarfile.SYMTYPE, "/etc/hostname"), None)
        ),
        "hard link": _tar(marker, (_entry("index.json", tarfile.LNKTYPE, "/etc/shadow"), None)),
        "fifo blob": _tar(marker, (_entry(f"blobs/sha256/{zero}", tarfile.FIFOTYPE), None)),
        "device": _tar(marker, (_entry(f"blobs/sha256/{zero}", tarfile.CHRTYPE), None)),
        "climbing name": _tar(marker, (_entry("../../etc/cron.d/x"), b"* * * * * root id\n")),
        "absolute name": _tar(marker, (_entry("/etc/hostname"), b"x")),
        "other name": _tar(marker, (_entry("blobs/sha256/../../kek.key"), b"x")),
        "wrong digest": _tar(marker, (_entry(f"blobs/sha256/{zero}"), b"not the zero digest")),
        "no index": _tar(marker),
        "index not json": _tar(marker, (_entry("index.json"), b"{")),
        "index names a missing blob": _tar(
            marker,
            (
                _entry("index.json"),
                json.dumps(
                    {"manifests": [{"digest": f"sha256:{zero}", "size": 3, "mediaType": "x"}]}
                ).encode(),
            ),
        ),
        "not a tar": b"GET / HTTP/1.1\r\n\r\n",
        "empty": b"",
    }
    for what, body in attempts.items():
        r = _upload(api, h, body)
        assert 400 <= r.status_code < 500, (what, r.status_code, r.text)
    orgs = inst.settings.data_dir / "images" / "orgs"
    leftovers = [p for org in orgs.iterdir() for p in org.iterdir()] if orgs.exists() else []
    assert leftovers == [], "a refused upload left files behind"


def test_an_upload_over_the_cap_is_refused(tmp_path: Path) -> None:
    inst = make_installation(tmp_path / "data", max_image_upload_bytes=1 << 20)
    cp = ControlPlane.open(inst.settings)
    try:
        with TestClient(create_app(cp), raise_server_exceptions=False) as api:
            api.post("/v1/apps", headers=inst.headers, json={"name": "web"})
            blob = os.urandom(2 << 20)
            body = _tar((_entry("blobs/sha256/" + "0" * 64), blob))
            assert _upload(api, inst.headers, body).status_code == 413
    finally:
        cp.close()


def test_an_upload_is_the_organizations_own(world: Any, tmp_path: Path) -> None:
    api, inst, cp, _ = world
    h = inst.headers
    _layout(tmp_path / "img")
    digest = upload_layout(api, h, "web", tmp_path / "img")
    made = _deploy(api, h, digest)
    assert made.status_code == 201, made.text
    assert made.json()["image_digest"] == digest
    assert upload_layout(api, h, "web", tmp_path / "img") == digest  # the same content, once

    # A viewer cannot upload; a deployer's permission is needed.
    api.post("/v1/orgs/acme/members", headers=h, json={"email": "vi@example.com", "role": "viewer"})
    viewer = bearer(mint_token(cp, "vi@example.com", org="acme"))
    refused = api.post(
        "/v1/apps/web/images",
        headers={**viewer, "content-type": "application/octet-stream"},
        content=b"",
    )
    assert refused.status_code == 403, refused.text

    # Another organization cannot deploy it by digest, nor reach its layout.
    api.post("/v1/orgs", headers=h, json={"name": "globex"})
    api.post(
        "/v1/orgs/globex/members", headers=h, json={"email": "eve@example.com", "role": "admin"}
    )
    eve = bearer(mint_token(cp, "eve@example.com", org="globex"))
    assert api.post("/v1/apps", headers=eve, json={"name": "evil"}).status_code == 201
    stolen = api.post(
        "/v1/apps/evil/releases", headers=eve, json={"image": digest, "config": 'app = "evil"\n'}
    )
    assert stolen.status_code == 404, stolen.text
    layout = str(made.json()["image"])
    by_path = api.post(
        "/v1/apps/evil/releases", headers=eve, json={"image": layout, "config": 'app = "evil"\n'}
    )
    assert by_path.status_code == 422, by_path.text
    with cp.db.read() as session:
        from sqlalchemy import select

        from hangar.store.tables import Org

        globex = session.execute(select(Org.id).where(Org.name == "globex")).scalar_one()
        acme = session.execute(select(Org.id).where(Org.name == "acme")).scalar_one()
    machine_layout(cp, acme, layout)  # its own organization's: fine
    with pytest.raises(ValidationError):
        machine_layout(cp, globex, layout)  # served to a machine of another: refused
    with pytest.raises(ValidationError):
        machine_layout(cp, acme, "oci:/etc")
