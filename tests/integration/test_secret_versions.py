"""Versions of an app's secrets: what each release's machines receive, and a rollback's.

Tried as an attacker would: no version's value is ever stored or shown in
plaintext, another organization's app never reaches this app's versions, and
a store migrated from before versions still delivers what it held.
"""

from __future__ import annotations

import json
import secrets as random
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from hangar.config.appconfig import parse_app_config
from hangar.controlplane.images import resolve_image
from hangar.controlplane.machines import create_machine, create_release, register_local_host
from hangar.controlplane.secrets import machine_secrets
from hangar.controlplane.secretversions import KEEP_VERSIONS
from hangar.controlplane.state import ControlPlane
from hangar.images.oci import build_layout, layer_tar
from hangar.store import db as store_db
from hangar.store.tables import App, Machine, Release, Secret, SecretVersion, SecretVersionValue
from tests.conftest import Installation, bearer, mint_token
from tests.integration.test_secrets_api import _stored
from tests.uploads import upload_layout


def _set(api: TestClient, h: dict[str, str], app: str, **values: str) -> dict[str, object]:
    r = api.put(
        f"/v1/apps/{app}/secrets",
        headers=h,
        json={"secrets": [{"name": k, "value": v} for k, v in values.items()]},
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def _app(cp: ControlPlane, name: str, org_id: str | None = None) -> App:
    with cp.db.read() as session:
        query = select(App).where(App.name == name)
        if org_id is not None:
            query = query.where(App.org_id == org_id)
        return session.execute(query).scalar_one()


def _complete(cp: ControlPlane, app: App, version: int) -> None:
    with cp.db.write() as session:
        row = session.execute(
            select(Release).where(Release.app_id == app.id, Release.version == version)
        ).scalar_one()
        row.status = "complete"


def _release(cp: ControlPlane, app: App, digest: str) -> int:
    """A completed release of the uploaded image, as a deploy leaves it."""
    with (
        resolve_image(cp, app.org_id, digest) as (layout, resolved),
        cp.db.write() as session,
    ):
        row = session.get(App, app.id)
        assert row is not None
        release = create_release(
            session,
            row,
            image=layout,
            image_digest=resolved,
            config=parse_app_config(f'app = "{app.name}"\n'),
            strategy="immediate",
            actor="test",
        )
        version = release.version
    _complete(cp, app, version)
    return version


def _values_for(cp: ControlPlane, app: App, version: int) -> dict[str, str]:
    """What a new machine of release ``version`` receives."""
    with cp.db.write() as session:
        row = session.get(App, app.id)
        assert row is not None
        machine_id = create_machine(session, row, version, None).id
    with cp.db.read() as session:
        machine = session.get(Machine, machine_id)
        assert machine is not None
        return machine_secrets(session, cp.keyring, machine)[0]


def _image(api: TestClient, h: dict[str, str], tmp_path: Path, app: str) -> str:
    build_layout(tmp_path / f"img-{app}", [layer_tar([])])
    return upload_layout(api, h, app, tmp_path / f"img-{app}")


@pytest.fixture
def deployable(
    api: TestClient, installation: Installation, control_plane: ControlPlane, tmp_path: Path
) -> tuple[App, str]:
    """App web of acme, host h1 to run it, its image uploaded: (the app, the image's digest)."""
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    with control_plane.db.write() as session:
        register_local_host(session, name="h1", region="local")
    digest = _image(api, h, tmp_path, "web")
    return _app(control_plane, "web"), digest


def _two_versions(
    api: TestClient, h: dict[str, str], cp: ControlPlane, web: App, digest: str, key: str
) -> None:
    """Release v1 with ``K`` = ``key``-1, then v2 (complete) with ``K`` = ``key``-2."""
    _set(api, h, "web", K=f"{key}-1")
    _release(cp, web, digest)
    _set(api, h, "web", K=f"{key}-2")
    _complete(cp, web, 2)


def test_a_rollback_delivers_the_secrets_its_release_ran_with(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    deployable: tuple[App, str],
) -> None:
    h = installation.headers
    old, new = "canary-" + random.token_hex(16), "canary-" + random.token_hex(16)
    web, digest = deployable
    _set(api, h, "web", DATABASE_URL=old, KEEP="same")
    assert _release(control_plane, web, digest) == 1
    # Changing a secret rolls out as v2 with the next version; v1's machines keep theirs.
    assert _set(api, h, "web", DATABASE_URL=new)["release"] == 2
    _complete(control_plane, web, 2)
    assert _values_for(control_plane, web, 2) == {"DATABASE_URL": new, "KEEP": "same"}
    assert _values_for(control_plane, web, 1) == {"DATABASE_URL": old, "KEEP": "same"}

    rolled = api.post("/v1/apps/web/releases/rollback", headers=h, json={"version": 1})
    assert rolled.status_code == 201, rolled.text
    assert (rolled.json()["version"], rolled.json()["secrets_version"]) == (3, 1)
    assert _values_for(control_plane, web, 3) == {"DATABASE_URL": old, "KEEP": "same"}
    listed = api.get("/v1/apps/web/releases", headers=h).json()
    assert [(r["version"], r["secrets_version"]) for r in listed] == [(3, 1), (2, 2), (1, 1)]
    # The app's current secrets are untouched: version 2 is still the newest.
    rows = api.get("/v1/apps/web/secrets", headers=h).json()
    assert {r["secrets_version"] for r in rows} == {2}
    events = api.get("/v1/audit/events", headers=h, params={"org": "acme"})
    rollback = [e for e in events.json()["items"] if e["action"] == "release.rollback"]
    assert rollback and '"secrets_version": 1' in json.dumps(rollback[0]["detail"])

    # No response and no stored byte holds either version's value.
    texts = [
        rolled.text,
        events.text,
        api.get("/v1/apps/web/releases", headers=h).text,
        api.get("/v1/apps/web/secrets", headers=h).text,
    ]
    for text in texts:
        assert old not in text and new not in text
    for blob in _stored(installation, control_plane, request):
        assert old.encode() not in blob and new.encode() not in blob
    for path in installation.settings.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert old.encode() not in data and new.encode() not in data, path


def test_another_org_never_reaches_this_apps_versions(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    tmp_path: Path,
    deployable: tuple[App, str],
) -> None:
    h = installation.headers
    web, digest = deployable
    _two_versions(api, h, control_plane, web, digest, "acme")

    # globex has its own app, with one release and no secrets.
    assert api.post("/v1/orgs", headers=h, json={"name": "globex"}).status_code == 201
    assert (
        api.post(
            "/v1/orgs/globex/members", headers=h, json={"email": "eve@example.com", "role": "admin"}
        ).status_code
        == 201
    )
    made = api.post("/v1/apps", headers=h, json={"name": "shop", "org": "globex"})
    assert made.status_code == 201, made.text
    api.delete("/v1/orgs/globex/members/admin@example.com", headers=h)
    eve = bearer(mint_token(control_plane, "eve@example.com", kind="org", org="globex"))
    theirs = _app_of_org(control_plane, "globex")
    their_digest = _image(api, eve, tmp_path, "shop")
    _release(control_plane, theirs, their_digest)

    # Every way eve could name acme's releases or versions fails, and she learns nothing.
    for version in (1, 2, 3, None):
        r = api.post("/v1/apps/web/releases/rollback", headers=eve, json={"version": version})
        assert r.status_code in (403, 404), r.text
        assert "acme" not in r.text and "acme-" not in r.text
        r = api.post("/v1/apps/shop/releases/rollback", headers=eve, json={"version": version})
        assert r.status_code in (404, 409), r.text  # only her own release v1, which is live
    for path in (f"/v1/apps/{web.id}/releases/rollback", "/v1/apps/acme/web/releases/rollback"):
        r = api.post(path, headers=eve, json={"version": 1})
        assert r.status_code in (403, 404, 405), r.text
    for path in ("/v1/apps/web/releases", "/v1/apps/web/secrets"):
        assert api.get(path, headers=eve).status_code in (403, 404)
    assert api.get("/v1/apps/shop/releases", headers=eve).json()[0]["secrets_version"] is None
    # Her machines receive nothing of acme's, whatever release they name.
    for version in (0, 1, 2):
        assert _values_for(control_plane, theirs, version) == {}
    assert _values_for(control_plane, web, 1) == {"K": "acme-1"}


def _app_of_org(cp: ControlPlane, org: str) -> App:
    from hangar.store.tables import Org

    with cp.db.read() as session:
        org_id = session.execute(select(Org.id).where(Org.name == org)).scalar_one()
        return session.execute(select(App).where(App.org_id == org_id)).scalar_one()


def test_changes_make_versions_and_retention_keeps_what_releases_name(
    api: TestClient, installation: Installation, control_plane: ControlPlane, tmp_path: Path
) -> None:
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    web = _app(control_plane, "web")
    _set(api, h, "web", A="1", B="1")
    # Staging makes no version; deploying the staged change does.
    staged = api.put(
        "/v1/apps/web/secrets",
        headers=h,
        json={"secrets": [{"name": "A", "value": "2"}], "stage": True},
    )
    assert staged.status_code == 200
    assert {r["secrets_version"] for r in api.get("/v1/apps/web/secrets", headers=h).json()} == {1}
    assert api.post("/v1/apps/web/secrets/deploy", headers=h).status_code == 200
    assert api.delete("/v1/apps/web/secrets?name=B", headers=h).status_code == 200
    assert {r["secrets_version"] for r in api.get("/v1/apps/web/secrets", headers=h).json()} == {3}
    with control_plane.db.write() as session:
        register_local_host(session, name="h1", region="local")
    digest = _image(api, h, tmp_path, "web")
    assert _release(control_plane, web, digest) == 1  # names version 3
    for i in range(KEEP_VERSIONS + 5):
        _set(api, h, "web", A=f"v{i}")
        if i < KEEP_VERSIONS + 4:
            _complete(control_plane, web, i + 2)
    newest = 3 + KEEP_VERSIONS + 5
    with control_plane.db.read() as session:
        kept = set(
            session.execute(
                select(SecretVersion.version).where(SecretVersion.app_id == web.id)
            ).scalars()
        )
        named = set(
            session.execute(
                select(Release.secrets_version).where(Release.app_id == web.id)
            ).scalars()
        )
    assert named <= kept  # every version a release names is kept
    assert set(range(newest - KEEP_VERSIONS + 1, newest + 1)) <= kept
    assert {1, 2} & kept == set()  # unnamed and old: gone
    assert _values_for(control_plane, web, 1) == {"A": "2"}  # v1 still delivers version 3

    # Destroying the app destroys every version.
    assert api.delete("/v1/apps/web", headers=h).status_code in (200, 204)
    with control_plane.db.read() as session:
        for table in (SecretVersion, SecretVersionValue, Secret):
            assert session.execute(select(func.count()).select_from(table)).scalar_one() == 0


def test_kek_and_data_key_rotation_cover_every_version(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    tmp_path: Path,
    deployable: tuple[App, str],
) -> None:
    h = installation.headers
    web, digest = deployable
    _two_versions(api, h, control_plane, web, digest, "kek")
    with control_plane.db.read() as session:
        before = {
            (v.version, v.name): v.ciphertext
            for v in session.execute(select(SecretVersionValue)).scalars()
        }
    rotated = api.post("/v1/system/rotate-kek", headers=h)
    assert rotated.status_code == 200, rotated.text
    assert len(rotated.json()["retired"]) == 1  # the old KEK is gone
    assert _values_for(control_plane, web, 1) == {"K": "kek-1"}
    assert _values_for(control_plane, web, 2) == {"K": "kek-2"}
    key = api.post("/v1/apps/web/secrets/rotate-key", headers=h)
    assert key.status_code == 200, key.text
    with control_plane.db.read() as session:
        after = {
            (v.version, v.name): (v.ciphertext, v.key_version)
            for v in session.execute(select(SecretVersionValue)).scalars()
        }
    assert set(after) == set(before)
    for where, (ciphertext, key_version) in after.items():
        assert ciphertext != before[where] and key_version == key.json()["key_version"]
    assert _values_for(control_plane, web, 1) == {"K": "kek-1"}
    assert _values_for(control_plane, web, 2) == {"K": "kek-2"}


def test_a_store_migrated_from_before_versions_still_delivers(
    api: TestClient, installation: Installation, control_plane: ControlPlane, tmp_path: Path
) -> None:
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    api.post("/v1/apps", headers=h, json={"name": "plain"})
    with control_plane.db.write() as session:
        register_local_host(session, name="h1", region="local")
    digest = _image(api, h, tmp_path, "web")
    web = _app(control_plane, "web")
    _set(api, h, "web", K="one", L="two")
    api.put(
        "/v1/apps/web/secrets",
        headers=h,
        json={"secrets": [{"name": "K", "value": "staged"}], "stage": True},
    )
    _release(control_plane, web, digest)
    # Back to the schema before versions (its secrets table as it was), then up again.
    cfg = Config()
    cfg.set_main_option("script_location", str(store_db._MIGRATIONS))
    with control_plane.db._writer.connect() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0015")
        conn.commit()
    control_plane.db.migrate()
    with control_plane.db.read() as session:
        versions = list(session.execute(select(SecretVersion)).scalars())
        assert [(v.app_id, v.version) for v in versions] == [(web.id, 1)]
        release = session.execute(select(Release).where(Release.app_id == web.id)).scalar_one()
        assert release.secrets_version == 1
    assert _values_for(control_plane, web, 1) == {"K": "one", "L": "two"}
    # The staged change is still staged, and deploying it makes version 2.
    assert api.post("/v1/apps/web/secrets/deploy", headers=h).status_code == 200
    assert _values_for(control_plane, web, 2) == {"K": "staged", "L": "two"}


def test_a_rollback_to_a_version_no_longer_kept_is_refused_before_anything_changes(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    tmp_path: Path,
    deployable: tuple[App, str],
) -> None:
    h = installation.headers
    web, digest = deployable
    _two_versions(api, h, control_plane, web, digest, "lost")
    with control_plane.db.write() as session:  # as if lost: never deliver another version
        for table in (SecretVersionValue, SecretVersion):
            session.execute(
                table.__table__.delete().where(table.app_id == web.id, table.version == 1)
            )
    r = api.post("/v1/apps/web/releases/rollback", headers=h, json={"version": 1})
    assert r.status_code == 409 and "secrets version 1" in r.json()["detail"], r.text
    assert [x["version"] for x in api.get("/v1/apps/web/releases", headers=h).json()] == [2, 1]
