"""The database handle: engine, read and write transactions, migrations.

SQLite runs in WAL mode with foreign keys on. Its writers open their
transaction with ``BEGIN IMMEDIATE`` so that two writers queue on the busy
timeout instead of failing when a read lock cannot be upgraded; its readers
run each statement in its own implicit transaction. PostgreSQL
runs the same code; audit appends serialise on a row lock of the chain head.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy.exc
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.orm import Session

from hangar.errors import Conflict, StoreError

__all__ = ["Database"]

_MIGRATIONS = Path(__file__).parent / "migrations"
POOL_SIZE = 40  # the size of the API's worker thread pool


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        try:
            if self.is_sqlite:
                self.engine = self._sqlite_engine(url)
            else:
                self.engine = create_engine(
                    url, pool_pre_ping=True, pool_size=10, max_overflow=POOL_SIZE - 10
                )
        except (sqlalchemy.exc.ArgumentError, ModuleNotFoundError) as exc:
            raise StoreError(f"cannot use database URL {parsed!r}: {exc}") from exc
        self._writer = self.engine.execution_options(hangar_write=True)
        self._readers = threading.local()
        self._readers_lock = threading.Lock()
        self._all_readers: set[Connection] = set()

    @staticmethod
    def _sqlite_engine(url: str) -> Engine:
        # Sized for the API's worker threads so connections are reused, not
        # reopened (each open runs the PRAGMAs below).
        engine = create_engine(
            url, connect_args={"timeout": 30}, pool_size=POOL_SIZE, max_overflow=POOL_SIZE
        )

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
            # Writers take the write lock up front. Readers issue no BEGIN:
            # each of their statements is its own consistent snapshot, which
            # is all a read here needs, and saves a round trip per request.
            if conn.get_execution_options().get("hangar_write", False):
                conn.exec_driver_sql("BEGIN IMMEDIATE")

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
    def connect(self) -> Iterator[Connection]:
        """An autocommit connection for hot, single-statement reads.

        Each thread keeps one open, so the API's authentication and listing
        reads skip the pool; in autocommit mode no transaction stays open
        between statements. A connection that fails is dropped and the next
        call opens a fresh one.
        """
        conn: Connection | None = getattr(self._readers, "conn", None)
        if conn is None or conn.closed:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._readers.conn = conn
            with self._readers_lock:
                self._all_readers.add(conn)
        try:
            yield conn
        except sqlalchemy.exc.DBAPIError as exc:
            self._readers.conn = None
            conn.invalidate()
            conn.close()
            if isinstance(exc, sqlalchemy.exc.OperationalError):
                raise StoreError(f"database error: {exc.orig}") from exc
            raise

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
        with self._readers_lock:
            for conn in self._all_readers:
                conn.close()
            self._all_readers.clear()
        self._readers = threading.local()
        self.engine.dispose()
