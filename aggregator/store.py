"""Database access of the aggregator: engine setup, schema migration, windows and lectures.

``Store.open(url)`` accepts a SQLite URL (``sqlite:///aggregator.db``, a path relative
to the working directory) or a PostgreSQL URL (``postgresql+psycopg://user@host/name``,
which needs the ``postgres`` extra). It upgrades the schema to the newest Alembic
revision before it returns. Every method returns frozen records, never ORM objects,
so callers in other threads or modules never touch a session.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event, func, select, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from aggregator.errors import ConfigError, LectureNotFoundError, StoreError
from aggregator.models import ROOM_LENGTH, TITLE_LENGTH, LectureRow, WindowRow
from edge_agent.payload import WindowReport

log = logging.getLogger(__name__)

DEFAULT_DB_URL = "sqlite:///aggregator.db"

# A writer waits this long for a SQLite lock held by another connection (the CLI adding a
# lecture while the aggregator ingests) before the statement fails with "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 10_000
POSTGRES_CONNECT_TIMEOUT_S = 10

# Key of the PostgreSQL advisory lock that serializes migrations of aggregators that
# start at the same time. Any constant works as long as no other application uses it.
MIGRATION_LOCK_KEY = 0x636C617373

MIGRATIONS_LOCATION = "aggregator:migrations"

_POSTGRES_HINT = "pip install 'classroom-emotion-stats[postgres]' for the psycopg driver"
_URL_FORMS = "sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DATABASE"


@dataclass(frozen=True, slots=True)
class ReceivedWindow:
    """A validated window payload and the time the aggregator received it."""

    report: WindowReport
    received_at: datetime


@dataclass(frozen=True, slots=True)
class InsertResult:
    """Outcome of one batch insert: new rows, and windows that were already stored."""

    stored: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class StoredWindow:
    """One row of the windows table. Times are UTC."""

    device_id: str
    room: str
    window_start: datetime
    window_end: datetime
    frames_sampled: int
    faces_seen: int
    min_faces: int
    suppressed: bool
    counts: dict[str, int] | None
    received_at: datetime

    @property
    def length_s(self) -> float:
        return (self.window_end - self.window_start).total_seconds()


@dataclass(frozen=True, slots=True)
class Lecture:
    """A lecture: what a report covers. Times are UTC, ``end`` exclusive."""

    id: int
    room: str
    title: str
    start: datetime
    end: datetime

    @property
    def duration_s(self) -> float:
        return (self.end - self.start).total_seconds()


@dataclass(frozen=True, slots=True)
class SchemaUpgrade:
    """Alembic revisions of the database before and after ``upgrade_schema``."""

    from_revision: str | None
    to_revision: str | None


class Store:
    """Windows and lectures in one SQLite or PostgreSQL database. Safe to share between threads."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.display_url = engine.url.render_as_string(hide_password=True)

    @classmethod
    def open(cls, url: str, *, upgrade: bool = True) -> Store:
        """Connect to the database at ``url`` and, if ``upgrade``, migrate it to the newest revision.

        Raises:
            ConfigError: the URL is malformed, names an unsupported database, or its driver is missing.
            StoreError: the database cannot be reached or migrated.
        """
        store = cls(create_store_engine(url))
        if upgrade:
            try:
                result = upgrade_schema(store._engine)
            except BaseException:
                store.close()
                raise
            if result.from_revision != result.to_revision:
                log.info(
                    "Upgraded the schema of %s from revision %s to %s",
                    store.display_url,
                    result.from_revision or "(empty)",
                    result.to_revision,
                )
        return store

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for queries that this class does not offer yet."""
        return self._engine

    @property
    def dialect_name(self) -> str:
        return self._engine.dialect.name

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def schema_revision(self) -> str | None:
        with self._errors("read the schema revision"), self._engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def insert_windows(self, windows: Sequence[ReceivedWindow]) -> InsertResult:
        """Insert windows in one transaction, skipping any (device_id, window_start) already stored.

        Raises:
            StoreError: the transaction failed and nothing was stored. ``retryable`` is
                true when the same call may succeed later.
        """
        rows_by_key: dict[tuple[str, datetime], dict[str, Any]] = {}
        for window in windows:
            key = (window.report.device_id, window.report.window_start)
            rows_by_key.setdefault(key, _window_row(window))
        if not rows_by_key:
            return InsertResult(stored=0, duplicates=0)

        table = WindowRow.__table__
        insert = sqlite_insert if self.dialect_name == "sqlite" else postgresql_insert
        # RETURNING yields only the rows that were inserted, so the rest were duplicates.
        statement = (
            insert(table)
            .on_conflict_do_nothing(index_elements=["device_id", "window_start"])
            .returning(table.c.id)
        )
        with self._errors(f"insert {len(rows_by_key)} windows"), self._engine.begin() as connection:
            inserted = len(connection.execute(statement, list(rows_by_key.values())).all())
        return InsertResult(stored=inserted, duplicates=len(windows) - inserted)

    def count_windows(self, device_id: str | None = None) -> int:
        """Return the number of stored windows, of one device or of all."""
        query = select(func.count()).select_from(WindowRow)
        if device_id is not None:
            query = query.where(WindowRow.device_id == device_id)
        with self._errors("count windows"), self._engine.connect() as connection:
            return connection.execute(query).scalar_one()

    def windows_in_room(self, room: str, start: datetime, end: datetime) -> list[StoredWindow]:
        """Return the windows of ``room`` whose start is in [start, end), ordered by start and device."""
        query = (
            select(WindowRow)
            .where(WindowRow.room == room, WindowRow.window_start >= start, WindowRow.window_start < end)
            .order_by(WindowRow.window_start, WindowRow.device_id)
        )
        with self._errors(f"read the windows of room {room!r}"), self._engine.connect() as connection:
            return [_stored_window(row) for row in connection.execute(query).mappings()]

    def add_lecture(self, room: str, title: str, start: datetime, end: datetime) -> Lecture:
        """Store a lecture and return it with its new id.

        Raises:
            ConfigError: a value is out of range: empty or too long, or end not after start.
        """
        _check_lecture(room, title, start, end)
        statement = LectureRow.__table__.insert().values(room=room, title=title, start=start, end=end)
        with self._errors("add a lecture"), self._engine.begin() as connection:
            lecture_id = connection.execute(statement.returning(LectureRow.id)).scalar_one()
        return self.get_lecture(lecture_id)

    def get_lecture(self, lecture_id: int) -> Lecture:
        """Return the lecture with this id.

        Raises:
            LectureNotFoundError: no lecture has the id.
        """
        query = select(LectureRow).where(LectureRow.id == lecture_id)
        with self._errors(f"read lecture {lecture_id}"), self._engine.connect() as connection:
            row = connection.execute(query).mappings().one_or_none()
        if row is None:
            raise LectureNotFoundError(
                f"Lecture {lecture_id} not found in {self.display_url}: "
                "run 'aggregator lecture list' with the same --db to see the ids"
            )
        return _lecture(row)

    def list_lectures(self, room: str | None = None) -> list[Lecture]:
        """Return all lectures, or those of one room, ordered by start."""
        query = select(LectureRow).order_by(LectureRow.start, LectureRow.id)
        if room is not None:
            query = query.where(LectureRow.room == room)
        with self._errors("list lectures"), self._engine.connect() as connection:
            return [_lecture(row) for row in connection.execute(query).mappings()]

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn SQLAlchemy errors into a StoreError that names the action and the database."""
        try:
            yield
        except SQLAlchemyError as error:
            raise _store_error(f"Cannot {action} in {self.display_url}", error) from error


def create_store_engine(url: str) -> Engine:
    """Create the engine for ``url``, with WAL mode and a busy timeout on SQLite.

    Raises:
        ConfigError: the URL is malformed or unsupported, or the database driver is missing.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"Invalid database URL {url!r}: use {_URL_FORMS}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        _check_sqlite_path(parsed)
        options: dict[str, Any] = {}
    elif backend == "postgresql":
        options = {"connect_args": {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}, "pool_pre_ping": True}
    else:
        raise ConfigError(f"Unsupported database {backend!r} in URL {_hidden(parsed)}: use {_URL_FORMS}")

    try:
        engine = create_engine(parsed, **options)
    except NoSuchModuleError:
        raise ConfigError(f"Unknown database driver in URL {_hidden(parsed)}: use {_URL_FORMS}") from None
    except ImportError as error:
        hint = _POSTGRES_HINT if backend == "postgresql" else "install the driver"
        raise ConfigError(f"The driver for {_hidden(parsed)} is not installed ({error}): {hint}") from None

    if backend == "sqlite":
        _configure_sqlite(engine)
    return engine


def upgrade_schema(engine: Engine) -> SchemaUpgrade:
    """Run the Alembic migrations shipped in ``aggregator/migrations`` up to the newest revision.

    The upgrade runs in one transaction under a lock, so aggregators and CLI commands
    that start at the same time on one database migrate it once: a PostgreSQL advisory
    lock, or SQLite's write lock taken by BEGIN IMMEDIATE.

    Raises:
        StoreError: the database is unreachable, or its revision is unknown to this version.
    """
    config = Config()
    config.set_main_option("script_location", MIGRATIONS_LOCATION)
    display_url = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                connection.execution_options(sqlite_begin="BEGIN IMMEDIATE")
            with connection.begin():
                if engine.dialect.name == "postgresql":
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                    )
                before = MigrationContext.configure(connection).get_current_revision()
                _check_known_revision(config, before, display_url)
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
                after = MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as error:
        raise _store_error(
            f"Cannot open and migrate the database {display_url}",
            error,
            hint=". Check that the database server runs and that the URL is right",
        ) from error
    except CommandError as error:
        raise StoreError(f"Migration of {display_url} failed: {error}") from error
    return SchemaUpgrade(from_revision=before, to_revision=after)


def _check_known_revision(config: Config, revision: str | None, display_url: str) -> None:
    if revision is None:
        return
    scripts = ScriptDirectory.from_config(config)
    try:
        scripts.get_revision(revision)
    except CommandError:
        raise StoreError(
            f"The database {display_url} has schema revision {revision!r}, which this aggregator "
            f"does not know (newest known: {scripts.get_current_head()}): "
            "upgrade the aggregator, or use a database that an older version created"
        ) from None


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Leave transactions to SQLAlchemy. By default the sqlite3 module begins a transaction
        # only before INSERT, UPDATE, DELETE or REPLACE, so DDL would run outside the migration's.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        # WAL lets reports read while the ingest writes. synchronous = FULL syncs the WAL on
        # every commit, so a window acknowledged over MQTT after its commit survives a power loss.
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql(connection.get_execution_options().get("sqlite_begin", "BEGIN"))


def _check_sqlite_path(url: URL) -> None:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:"):
        raise ConfigError(
            f"In-memory SQLite URL {_hidden(url)!r} is not supported because each connection would see "
            "its own empty database: give a file, for example sqlite:///aggregator.db"
        )
    directory = Path(database).parent
    if not directory.is_dir():
        raise ConfigError(
            f"The directory {str(directory)!r} of the database file {database!r} does not exist: create it "
            "or change --db"
        )


def _check_lecture(room: str, title: str, start: datetime, end: datetime) -> None:
    if not room or len(room) > ROOM_LENGTH or room != room.strip() or not room.isprintable():
        raise ConfigError(
            f"Invalid room {room!r}: use 1 to {ROOM_LENGTH} printable characters without "
            "leading or trailing spaces, as in the agents' config"
        )
    if not title.strip() or len(title) > TITLE_LENGTH or not title.isprintable():
        raise ConfigError(f"Invalid title {title!r}: use 1 to {TITLE_LENGTH} printable characters")
    for name, moment in (("start", start), ("end", end)):
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ConfigError(f"Lecture {name} {moment.isoformat()} has no time zone: give a UTC offset")
    if end <= start:
        raise ConfigError(
            f"Lecture end {end.isoformat()} is not after its start {start.isoformat()}: swap or correct them"
        )


def _window_row(window: ReceivedWindow) -> dict[str, Any]:
    report = window.report
    return {
        "device_id": report.device_id,
        "room": report.room,
        "window_start": report.window_start,
        "window_end": report.window_end,
        "frames_sampled": report.frames_sampled,
        "faces_seen": report.faces_seen,
        "min_faces": report.min_faces,
        "suppressed": report.suppressed,
        "counts": dict(report.counts) if report.counts is not None else None,
        "received_at": window.received_at,
    }


def _stored_window(row: Any) -> StoredWindow:
    return StoredWindow(
        device_id=row["device_id"],
        room=row["room"],
        window_start=row["window_start"],
        window_end=row["window_end"],
        frames_sampled=row["frames_sampled"],
        faces_seen=row["faces_seen"],
        min_faces=row["min_faces"],
        suppressed=bool(row["suppressed"]),
        counts=row["counts"],
        received_at=row["received_at"],
    )


def _lecture(row: Any) -> Lecture:
    return Lecture(id=row["id"], room=row["room"], title=row["title"], start=row["start"], end=row["end"])


def _store_error(message: str, error: SQLAlchemyError, hint: str = "") -> StoreError:
    # Connection loss, a locked SQLite file or an exhausted pool can clear up by themselves,
    # but the same data fails again.
    retryable = isinstance(error, (OperationalError, InterfaceError, PoolTimeoutError))
    detail = error.orig if isinstance(error, DBAPIError) else error
    # Driver messages span lines (libpq adds hints); the CLI prints each error as one line.
    one_line = " ".join(str(detail).split())
    return StoreError(f"{message}: {one_line}{hint}", retryable=retryable)


def _hidden(url: URL) -> str:
    return url.render_as_string(hide_password=True)
