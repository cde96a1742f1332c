"""Key-encryption keys: in an HSM (SoftHSM here), and rotated online."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pkcs11
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from hangar.api.app import create_app
from hangar.audit.log import AuditContext
from hangar.controlplane import idps
from hangar.controlplane.machines import register_local_host
from hangar.controlplane.secrets import deliver
from hangar.controlplane.state import ControlPlane
from hangar.crypto.kek import Pkcs11KekProvider
from hangar.crypto.keyring import Keyring
from hangar.crypto.rotation import WRAPPED_FILES
from hangar.errors import KeyMaterialError
from hangar.store.tables import AppKey, AuditEvent, IdentityProvider, Machine, RootKey
from tests.conftest import Installation, SoftHsm, bearer, make_installation, mint_token
from tests.uploads import upload_layout

HOST = AuditContext(actor="host:test", token_id=None, request_id=None, client_addr=None)


def test_a_kek_in_the_hsm_never_leaves_it(softhsm: SoftHsm) -> None:
    provider = Pkcs11KekProvider(softhsm.module, softhsm.token, softhsm.pin_file, "unit-kek")
    provider.create()
    ring = Keyring(provider)
    blob = ring.wrap(b"data key", purpose="p")
    assert ring.unwrap(blob, purpose="p") == b"data key"
    session = provider._open()
    key = session.get_key(label="unit-kek-1", key_type=pkcs11.KeyType.AES)
    assert key[pkcs11.Attribute.SENSITIVE] is True
    assert key[pkcs11.Attribute.EXTRACTABLE] is False
    ring.rotate()
    assert ring.unwrap(blob, purpose="p") == b"data key"
    fresh = ring.wrap(b"data key", purpose="p")
    ring.retire_others()
    assert [k.label for k in provider.load()] == ["unit-kek-2"]  # type: ignore[attr-defined]
    with pytest.raises(KeyMaterialError, match="another key-encryption key"):
        ring.unwrap(blob, purpose="p")
    assert Keyring(provider).unwrap(fresh, purpose="p") == b"data key"


def test_an_installation_on_an_hsm_and_no_fallback(
    softhsm: SoftHsm, tmp_path: Path, database_url: str
) -> None:
    settings = {
        "kek_provider": "pkcs11",
        "pkcs11_module": softhsm.module,
        "pkcs11_token": softhsm.token,
        "pkcs11_pin_file": softhsm.pin_file,
        "pkcs11_key_label": f"inst-{tmp_path.name[-20:].replace('_', '-')}",
    }
    inst = make_installation(tmp_path / "data", database_url, **settings)
    assert not (tmp_path / "data/kek.key").exists()  # nothing on disk
    cp = ControlPlane.open(inst.settings)
    try:
        with TestClient(create_app(cp), raise_server_exceptions=False) as api:
            h = inst.headers
            api.post("/v1/apps", headers=h, json={"name": "web"})
            put = api.put(
                "/v1/apps/web/secrets", headers=h, json={"secrets": [{"name": "K", "value": "v"}]}
            )
            assert put.status_code == 200, put.text
            with cp.db.write() as session:
                host = register_local_host(session, name="h1")
            _machine(api, h, tmp_path)
            with cp.db.read() as session:
                machine = session.execute(select(Machine)).scalar_one()
            assert deliver(
                cp.db, cp.keyring, cp.audit, HOST, host_id=host.id, machine_id=machine.id
            ) == {"K": "v"}
    finally:
        cp.close()

    wrong_pin = tmp_path / "wrong.pin"
    wrong_pin.write_text("000000\n")
    wrong_pin.chmod(0o600)
    for change, words in (
        ({"pkcs11_pin_file": str(wrong_pin)}, "cannot open PKCS#11 token"),
        ({"pkcs11_token": "no-such-token"}, "cannot open PKCS#11 token"),
        ({"pkcs11_key_label": "missing"}, "holds no key labelled missing"),
    ):
        # In a process of its own: PKCS#11 logins are per process, and this one is in.
        refused = _open_elsewhere(inst, change)
        assert refused.returncode == 3 and words in refused.stdout, refused.stdout + refused.stderr
        assert not (tmp_path / "data/kek.key").exists()  # and never a weaker fallback


def _open_elsewhere(inst: Installation, change: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = (
        "import json, sys\n"
        "from hangar.config.settings import ServerSettings\n"
        "from hangar.controlplane.state import ControlPlane\n"
        "from hangar.errors import HangarError\n"
        "settings = ServerSettings.model_validate(json.loads(sys.argv[1]))\n"
        "try:\n"
        "    ControlPlane.open(settings)\n"
        "except HangarError as exc:\n"
        "    print(exc.message)\n"
        "    sys.exit(3)\n"
    )
    data = {**inst.settings.model_dump(mode="json"), **change}
    return subprocess.run(
        [sys.executable, "-c", script, json.dumps(data)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )


def _machine(api: TestClient, h: dict[str, str], tmp_path: Path) -> None:
    from hangar.images.oci import build_layout, layer_tar

    build_layout(tmp_path / "img", [layer_tar([])])
    made = api.post(
        "/v1/apps/web/machines",
        headers=h,
        json={"image": upload_layout(api, h, "web", tmp_path / "img"), "cmd": ["true"]},
    )
    assert made.status_code == 201, made.text


def test_the_kek_rotates_online_and_the_old_one_is_gone(
    api: TestClient, installation: Installation, control_plane: ControlPlane, tmp_path: Path
) -> None:
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    api.put("/v1/apps/web/secrets", headers=h, json={"secrets": [{"name": "K", "value": "v"}]})
    idp = {"name": "corp", "issuer": "https://sso.example", "client_id": "h", "client_secret": "s3"}
    assert api.post("/v1/idps", headers=h, json=idp).status_code == 201
    kek_file = installation.settings.effective_kek_file
    old_kek = kek_file.read_text().strip()

    api.post("/v1/orgs/acme/members", headers=h, json={"email": "m@example.com", "role": "admin"})
    org_admin = bearer(mint_token(control_plane, "m@example.com", kind="org", org="acme"))
    assert api.post("/v1/system/rotate-kek", headers=org_admin).status_code == 403

    rotated = api.post("/v1/system/rotate-kek", headers=h)
    assert rotated.status_code == 200, rotated.text
    body = rotated.json()
    assert body["rewrapped"] >= 4 and len(body["retired"]) == 1
    new_kek = kek_file.read_text().strip()
    assert "\n" not in new_kek and new_kek != old_kek  # the old key is gone from the file
    assert (kek_file.stat().st_mode & 0o777) == 0o600

    # Still online: the same token works, secrets still reach machines.
    assert api.get("/v1/apps", headers=h).status_code == 200
    with control_plane.db.write() as session:
        host = register_local_host(session, name="h1")
    _machine(api, h, tmp_path)
    with control_plane.db.read() as session:
        machine = session.execute(select(Machine)).scalar_one()
    assert deliver(
        control_plane.db,
        control_plane.keyring,
        control_plane.audit,
        HOST,
        host_id=host.id,
        machine_id=machine.id,
    ) == {"K": "v"}

    # Every wrapped key, in files and rows, names the new KEK; a restart reads them all.
    kid = bytes.fromhex(body["kek_id"])
    blobs = [(installation.settings.data_dir / name).read_bytes() for name in WRAPPED_FILES]
    with control_plane.db.read() as session:
        blobs += list(session.execute(select(RootKey.wrapped)).scalars())
        blobs += list(session.execute(select(AppKey.wrapped)).scalars())
        provider = session.execute(select(IdentityProvider)).scalar_one()
        assert provider.client_secret is not None
        blobs.append(provider.client_secret)
    assert len(blobs) >= 5 and all(b[1:9] == kid for b in blobs)
    assert idps.provider_config(control_plane, provider).client_secret == "s3"
    again = ControlPlane.open(installation.settings)
    again.close()
    with control_plane.db.read() as session:
        event = session.execute(
            select(AuditEvent).where(AuditEvent.action == "kek.rotate")
        ).scalar_one()
    assert event.target == body["kek_id"] and event.chain == "system"  # the installation's chain
