"""`docker://` images: copied from a registry with skopeo, pinned by digest.

A real registry (Debian's docker-registry, the CNCF distribution server)
runs on loopback for the test, so nothing leaves this machine.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hangar.api.app import create_app
from hangar.controlplane.state import ControlPlane
from hangar.images.oci import build_layout, layer_tar, parse_image_ref, read_manifest
from tests.conftest import make_installation

pytestmark = pytest.mark.skipif(
    shutil.which("skopeo") is None or shutil.which("docker-registry") is None,
    reason="needs skopeo and docker-registry (`make deps` installs them)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """A plain-HTTP registry on loopback; yields its host:port."""
    address = f"127.0.0.1:{_free_port()}"
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'registry'}}}}}\n"
        f"http: {{addr: {address}}}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(tuple(address.split(":")), timeout=1).close()  # type: ignore[arg-type]
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("the test registry did not start") from None
                time.sleep(0.1)
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_registry_image_is_copied_pinned_and_nothing_is_left_on_failure(
    registry: str, tmp_path: Path
) -> None:
    layout = tmp_path / "built"
    build_layout(layout, [layer_tar([])], config={"Entrypoint": ["/bin/httpd", "-f"]})
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci:{layout}:latest",
            f"docker://{registry}/clinic/web:v1",
        ],
        check=True,
        capture_output=True,
    )
    closed_port = _free_port()
    closed_name = f"127.0.0.1:{closed_port}"
    inst = make_installation(
        tmp_path / "data",
        insecure_registries=[registry],
        # Loopback registries are refused unless the operator names them.
        allowed_registries=[registry, closed_name],
    )
    cp = ControlPlane.open(inst.settings)
    images = inst.settings.data_dir / "images"
    try:
        with TestClient(create_app(cp), raise_server_exceptions=False) as api:
            h = inst.headers
            api.post("/v1/apps", headers=h, json={"name": "web"})

            def deploy(image: str) -> dict[str, object]:
                r = api.post(
                    "/v1/apps/web/releases",
                    headers=h,
                    json={"image": image, "config": 'app = "web"\n'},
                )
                return {**r.json(), "http": r.status_code}

            made = deploy(f"docker://{registry}/clinic/web:v1")
            assert made["http"] == 201, made
            (store,) = (images / "orgs").iterdir()
            copied = parse_image_ref(str(made["image"]))
            # Kept in the organization's store, named by its digest.
            assert copied.path is not None and copied.path.parent == store
            manifest = read_manifest(copied)
            assert made["image_digest"] == manifest.digest
            assert copied.path.name == "sha256-" + manifest.digest.removeprefix("sha256:")
            assert manifest.config.entrypoint == ["/bin/httpd", "-f"]
            (only,) = store.iterdir()

            # Failures: a clear error, and no copy left behind.
            missing = deploy(f"docker://{registry}/clinic/web:nope")
            assert missing["http"] == 502 and "copying" in str(missing["detail"])
            closed = deploy(f"docker://{closed_name}/clinic/web:v1")
            assert closed["http"] == 502
            assert "registry unreachable" in str(closed["detail"])
            assert "refused" not in str(closed["detail"]).lower()
            malformed = deploy("docker://Not A Reference")
            assert malformed["http"] == 422
            assert list(store.iterdir()) == [only]
            assert len(api.get("/v1/apps/web/releases", headers=h).json()) == 1
    finally:
        cp.close()


def test_tls_is_verified_unless_the_registry_is_listed_insecure(
    registry: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inst = make_installation(tmp_path / "data", allowed_registries=[registry])
    cp = ControlPlane.open(inst.settings)
    try:
        with TestClient(create_app(cp), raise_server_exceptions=False) as api:
            api.post("/v1/apps", headers=inst.headers, json={"name": "web"})
            refused = api.post(
                "/v1/apps/web/releases",
                headers=inst.headers,
                json={"image": f"docker://{registry}/clinic/web:v1", "config": 'app = "web"\n'},
            )
        assert refused.status_code == 502, refused.text
        # What answered stays in the server's log; the caller learns only this.
        assert "registry unreachable" in refused.json()["detail"]
        assert "http response to https client" not in refused.text.lower()
        assert "http response to https client" in caplog.text.lower()
    finally:
        cp.close()
