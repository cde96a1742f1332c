"""The database handle: engine, read and write transactions, migrations.

SQLite runs in WAL mode with foreign keys on. Its writers open their
transaction with ``BEGIN IMMEDIATE`` so that two writers queue on the busy
timeout instead of failing when a read lock cannot be upgraded. PostgreSQL
runs the same code; audit appends serialise on a row lock of the chain head.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy.exc
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session

from hangar.errors import Conflict, StoreError

__all__ = ["Database"]

_MIGRATIONS = Path(__file__).parent / "migrations"


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        try:
            if self.is_sqlite:
                self.engine = self._sqlite_engine(url)
            else:
                self.engine = create_engine(url, pool_pre_ping=True, pool_size=10)
        except (sqlalchemy.exc.ArgumentError, ModuleNotFoundError) as exc:
            raise StoreError(f"cannot use database URL {parsed!r}: {exc}") from exc
        self._writer = self.engine.execution_options(hangar_write=True)

    @staticmethod
    def _sqlite_engine(url: str) -> Engine:
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event decide how each transaction starts.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            write = conn.get_execution_options().get("hangar_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent)."""
        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        try:
            with self._writer.connect() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                conn.commit()
        except sqlalchemy.exc.OperationalError as exc:
            raise StoreError(f"cannot migrate the database: {exc.orig}") from exc

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
            except sqlalchemy.exc.OperationalError as exc:
                raise StoreError(f"database error: {exc.orig}") from exc

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that commits if the block finishes and rolls back if it raises."""
        with Session(self._writer, expire_on_commit=False) as session:
            try:
                with session.begin():
                    yield session
            except sqlalchemy.exc.IntegrityError as exc:
                raise Conflict(f"the change conflicts with existing data: {exc.orig}") from exc
            except sqlalchemy.exc.OperationalError as exc:
                raise StoreError(f"database error: {exc.orig}") from exc

    def dispose(self) -> None:
        self.engine.dispose()
