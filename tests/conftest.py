"""Fixtures shared by every tier: a clean environment, stores, an installation."""

from __future__ import annotations

import datetime as dt
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from hangar.api.app import create_app
from hangar.config.settings import ServerSettings
from hangar.controlplane.bootstrap import InitResult, init_server
from hangar.controlplane.state import ControlPlane


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No HANGAR_* setting leaks in from the developer's shell; the CLI's login is private."""
    for name in list(os.environ):
        if name.startswith("HANGAR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HANGAR_CONFIG_DIR", str(tmp_path / "cli-config"))


def _pg_binary(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        pytest.fail(f"PostgreSQL's {name} is not installed: run `make deps`")
    return found


@dataclass(frozen=True)
class PostgresServer:
    socket_dir: Path

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.socket_dir}"

    def create_database(self) -> str:
        name = "hangar_" + secrets.token_hex(6)
        with psycopg.connect(
            host=str(self.socket_dir), user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def dump(self, database: str) -> bytes:
        return subprocess.run(
            [_pg_binary("pg_dump"), "-h", str(self.socket_dir), "-U", "postgres", database],
            check=True,
            capture_output=True,
        ).stdout


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL listening only on a unix socket in a temp dir."""
    base = Path(tempfile.mkdtemp(prefix="hangar-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root.
        entry = pwd.getpwnam("postgres")
        os.chown(base, entry.pw_uid, entry.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = base / "data"
    subprocess.run(
        [
            *as_user,
            _pg_binary("initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    options = f"-k {base} -c listen_addresses='' -c fsync=off -c max_connections=200"
    subprocess.run(
        [
            *as_user,
            _pg_binary("pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(base / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield PostgresServer(base)
    finally:
        subprocess.run(
            [*as_user, _pg_binary("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Empty for the default SQLite store; a fresh PostgreSQL database otherwise."""
    if request.param == "sqlite":
        return ""
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.url(server.create_database())


@dataclass
class Installation:
    settings: ServerSettings
    init: InitResult
    # The admin's own user token: the tests' everyday credential. The token
    # `server init` printed (``init.token``) is the break-glass token, each use
    # of which is an audit event of its own; tests of that use it by name.
    admin_token: str = ""
    admin_token_id: str = ""

    @property
    def token(self) -> str:
        return self.admin_token or self.init.token

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def break_glass_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.init.token}"}


def make_installation(data_dir: Path, database_url: str = "", **settings: object) -> Installation:
    config = ServerSettings(data_dir=data_dir, database_url=database_url, **settings)  # type: ignore[arg-type]
    result = init_server(
        config, org_name="acme", admin_email="admin@example.com", token_ttl=dt.timedelta(days=1)
    )
    from sqlalchemy import select

    from hangar.store.tables import User

    cp = ControlPlane.open(config)
    try:
        with cp.db.write() as session:
            user = session.execute(
                select(User).where(User.email == "admin@example.com")
            ).scalar_one()
            row, token = cp.tokens.mint(
                session,
                user_id=user.id,
                kind="user",
                org_id=None,
                ttl=dt.timedelta(days=1),
                name="admin token",
            )
    finally:
        cp.close()
    return Installation(config, result, admin_token=token, admin_token_id=row.id)


@pytest.fixture
def installation(tmp_path: Path, database_url: str) -> Installation:
    return make_installation(tmp_path / "data", database_url)


@pytest.fixture
def control_plane(installation: Installation) -> Iterator[ControlPlane]:
    cp = ControlPlane.open(installation.settings)
    yield cp
    cp.close()


@pytest.fixture
def api(control_plane: ControlPlane) -> Iterator[TestClient]:
    with TestClient(create_app(control_plane), raise_server_exceptions=False) as client:
        yield client


def mint_token(
    cp: ControlPlane,
    email: str,
    kind: str = "user",
    org: str | None = None,
    app: str | None = None,
    ttl: dt.timedelta | None = dt.timedelta(hours=1),
) -> str:
    """A token for ``email`` straight from the store (as `hangar auth login` will via SSO)."""
    from sqlalchemy import select

    from hangar.store.tables import Org, User

    with cp.db.write() as session:
        user = session.execute(select(User).where(User.email == email)).scalar_one()
        org_id = None
        if org is not None:
            org_id = session.execute(select(Org.id).where(Org.name == org)).scalar_one()
        _, token = cp.tokens.mint(
            session, user_id=user.id, kind=kind, org_id=org_id, app=app, ttl=ttl
        )
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class SoftHsm:
    module: Path
    token: str
    pin_file: Path


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    """A SoftHSM token for this test session (the PKCS#11 library reads its config once)."""
    module = Path("/usr/lib/softhsm/libsofthsm2.so")
    if shutil.which("softhsm2-util") is None or not module.exists():
        pytest.fail("SoftHSM is not installed: run `make deps`")
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pin = secrets.token_hex(8)
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            "hangar-test",
            "--pin",
            pin,
            "--so-pin",
            secrets.token_hex(8),
        ],
        check=True,
        capture_output=True,
    )
    pin_file = root / "pin"
    pin_file.write_text(pin + "\n")
    pin_file.chmod(0o600)
    return SoftHsm(module, "hangar-test", pin_file)
