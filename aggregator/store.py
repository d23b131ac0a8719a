"""Database access of the aggregator: engine setup, schema migration, windows and lectures.

``Store.open(url)`` accepts a SQLite URL (``sqlite:///aggregator.db``, a path relative
to the working directory) or a PostgreSQL URL (``postgresql+psycopg://user@host/name``,
which needs the ``postgres`` extra). It upgrades the schema to the newest Alembic
revision before it returns. Every method returns frozen records, never ORM objects,
so callers in other threads or modules never touch a session.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from pydantic_core import to_json
from sqlalchemy import Engine, Select, create_engine, delete, event, func, select, text, update
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from aggregator.devices import DeviceEvent, upsert_device_events, upsert_window_devices
from aggregator.errors import ConfigError, LectureNotFoundError, StoreError
from aggregator.models import COURSE_LENGTH, ROOM_LENGTH, TITLE_LENGTH, DeviceRow, LectureRow, WindowRow
from aggregator.plural import counted
from edge_agent.payload import WindowReport

log = logging.getLogger(__name__)

DEFAULT_DB_URL = "sqlite:///aggregator.db"

# A writer waits this long for a SQLite lock held by another connection (the CLI adding a
# lecture while the aggregator ingests) before the statement fails with "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 10_000
POSTGRES_CONNECT_TIMEOUT_S = 10
# Page cache of each SQLite connection, in KiB.
SQLITE_CACHE_KIB = 64 * 1024

# Key of the PostgreSQL advisory lock that serializes migrations of aggregators that
# start at the same time. Any constant works as long as no other application uses it.
MIGRATION_LOCK_KEY = 0x636C617373
# First key of the PostgreSQL advisory locks that serialize 'lecture start' per room. The
# second is a hash of the room. Locks with two int keys never meet the one-key migration lock.
AD_HOC_LOCK_CLASS = 0x61646863
# Longest planned length of an ad hoc lecture. 'lecture stop' also ends a lecture that
# runs past its planned end, but only one that started at most this long ago, so a
# forgotten lecture is not stretched over days.
MAX_AD_HOC_LENGTH = timedelta(hours=24)

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


class LectureSource(StrEnum):
    """Origin of a lecture: added by hand, started ad hoc, or imported from a timetable."""

    MANUAL = "manual"
    AD_HOC = "ad-hoc"
    CSV = "csv"
    ICS = "ics"


@dataclass(frozen=True, slots=True)
class Lecture:
    """A lecture: what a report covers. Times are UTC, ``end`` exclusive.

    An ad hoc lecture that is still running has the planned end that ``lecture start``
    gave it until ``lecture stop`` sets the real one (see ``Store.stop_lecture``).
    """

    id: int
    room: str
    title: str
    start: datetime
    end: datetime
    course: str | None = None
    source: LectureSource = LectureSource.MANUAL

    @property
    def duration_s(self) -> float:
        return (self.end - self.start).total_seconds()


class LectureRunningError(ConfigError):
    """Error for a second ad hoc lecture in a room. ``running`` is the lecture that runs there."""

    def __init__(self, message: str, running: Lecture) -> None:
        super().__init__(message)
        self.running = running


@dataclass(frozen=True, slots=True)
class TimetableEntry:
    """One lecture of an imported timetable; ``uid`` identifies it within its room and source.

    ``global_uid`` is true when the uid identifies the lecture in every room (an iCalendar
    UID), so that the import moves the lecture when its room changes.
    """

    room: str
    title: str
    start: datetime
    end: datetime
    course: str | None
    uid: str
    global_uid: bool = False


@dataclass(frozen=True, slots=True)
class ImportResult:
    """Lectures added and lectures updated by one timetable import."""

    added: int
    updated: int


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """Rows deleted by one purge."""

    windows: int
    lectures: int
    devices: int


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
        if not windows:
            return InsertResult(stored=0, duplicates=0)
        sqlite = self.dialect_name == "sqlite"
        # A window that occurs twice in the batch is skipped by ON CONFLICT like any other duplicate.
        if sqlite:
            rows = _sqlite_window_rows(windows)
        else:
            rows = [_postgresql_window_row(window) for window in windows]

        # The driver's executemany with pre-converted values: SQLAlchemy's per-value bind
        # processing took about 40 us of the 90 us per row that the ingest spent here.
        statement = _SQLITE_INSERT_WINDOWS if sqlite else _POSTGRESQL_INSERT_WINDOWS
        with self._errors(f"insert {len(rows)} windows"), self._engine.begin() as connection:
            # ON CONFLICT DO NOTHING counts only inserted rows, so the rest were duplicates.
            inserted = connection.exec_driver_sql(statement, rows).rowcount
            # Same transaction: a device's last_seen never runs ahead of its stored windows.
            upsert_window_devices(connection, windows)
        return InsertResult(stored=inserted, duplicates=len(windows) - inserted)

    def record_device_events(self, events: Sequence[DeviceEvent]) -> None:
        """Store status and stats messages of devices in one transaction."""
        if not events:
            return
        with self._errors(f"store {len(events)} device status or stats messages"), self._engine.begin() as connection:
            upsert_device_events(connection, events)

    def count_windows(self, device_id: str | None = None) -> int:
        """Return the number of stored windows, of one device or of all."""
        query = select(func.count()).select_from(WindowRow)
        if device_id is not None:
            query = query.where(WindowRow.device_id == device_id)
        with self._errors("count windows"), self._engine.connect() as connection:
            return connection.execute(query).scalar_one()

    def windows_in_room(self, room: str, start: datetime, end: datetime) -> list[StoredWindow]:
        """Return the windows of ``room`` whose start is in [start, end), ordered by start and device."""
        if self.dialect_name == "sqlite":
            return self._sqlite_windows_in_room(room, start, end)
        query = (
            select(WindowRow)
            .where(WindowRow.room == room, WindowRow.window_start >= start, WindowRow.window_start < end)
            .order_by(WindowRow.window_start, WindowRow.device_id)
        )
        with self._errors(f"read the windows of room {room!r}"), self._engine.connect() as connection:
            return [_stored_window(row) for row in connection.execute(query).mappings()]

    def _sqlite_windows_in_room(self, room: str, start: datetime, end: datetime) -> list[StoredWindow]:
        # The driver's rows converted here: with SQLAlchemy's per-value result processing (a
        # regular expression per datetime) a lecture's 540 rows took 20 ms instead of 9.5 ms.
        for moment in (start, end):
            if moment.tzinfo is None or moment.utcoffset() is None:
                raise StoreError(
                    f"Cannot read the windows of room {room!r} in {self.display_url}: naive datetime "
                    f"{moment.isoformat()} cannot be compared with stored times: give it a time zone"
                )
        with self._errors(f"read the windows of room {room!r}"), self._engine.connect() as connection:
            rows = connection.exec_driver_sql(
                _SQLITE_WINDOWS_IN_ROOM, (room, _sqlite_time(start), _sqlite_time(end))
            ).fetchall()
        return [
            StoredWindow(
                device_id=device_id,
                room=room,
                window_start=_from_sqlite_time(window_start),
                window_end=_from_sqlite_time(window_end),
                frames_sampled=frames_sampled,
                faces_seen=faces_seen,
                min_faces=min_faces,
                suppressed=bool(suppressed),
                counts=json.loads(counts) if counts is not None else None,
                received_at=_from_sqlite_time(received_at),
            )
            for (
                device_id,
                window_start,
                window_end,
                frames_sampled,
                faces_seen,
                min_faces,
                suppressed,
                counts,
                received_at,
            ) in rows
        ]

    def add_lecture(
        self,
        room: str,
        title: str,
        start: datetime,
        end: datetime,
        *,
        course: str | None = None,
        source: LectureSource = LectureSource.MANUAL,
    ) -> Lecture:
        """Store a lecture and return it with its new id.

        Raises:
            ConfigError: a value is out of range: empty or too long, or end not after start.
        """
        _check_lecture(room, title, start, end)
        _check_course(course)
        statement = LectureRow.__table__.insert().values(
            room=room, title=title, start=start, end=end, course=course, source=source.value
        )
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

    def list_lectures(
        self,
        room: str | None = None,
        *,
        course: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[Lecture]:
        """Return the lectures of a room and course that start in [start, end), ordered by start.

        Each filter that is None matches every lecture.
        """
        query = select(LectureRow).order_by(LectureRow.start, LectureRow.id)
        if room is not None:
            query = query.where(LectureRow.room == room)
        if course is not None:
            query = query.where(LectureRow.course == course)
        if start is not None:
            query = query.where(LectureRow.start >= start)
        if end is not None:
            query = query.where(LectureRow.start < end)
        with self._errors("list lectures"), self._engine.connect() as connection:
            return [_lecture(row) for row in connection.execute(query).mappings()]

    def start_ad_hoc_lecture(
        self, room: str, title: str, now: datetime, end: datetime, *, course: str | None = None
    ) -> Lecture:
        """Store an ad hoc lecture of ``room`` from ``now`` to ``end``, unless one already runs at ``now``.

        The lecture starts at ``now`` cut to whole seconds. The check for a running lecture
        uses ``now`` itself, because 'lecture stop' ends lectures at times with microseconds.
        Check and insert run in one transaction that concurrent calls for the room wait
        for: SQLite's write lock (BEGIN IMMEDIATE), or a PostgreSQL advisory lock of the room.

        Raises:
            LectureRunningError: an ad hoc lecture of the room runs at ``now``.
            ConfigError: a value is invalid (see ``add_lecture``).
        """
        start = now.replace(microsecond=0)
        _check_lecture(room, title, start, end)
        _check_course(course)
        table = LectureRow.__table__
        with self._errors(f"start a lecture in room {room!r}"), self._engine.connect() as connection:
            if self.dialect_name == "sqlite":
                connection.execution_options(sqlite_begin="BEGIN IMMEDIATE")
            with connection.begin():
                if self.dialect_name == "postgresql":
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:class_key, :room_key)"),
                        {"class_key": AD_HOC_LOCK_CLASS, "room_key": _room_lock_key(room)},
                    )
                query = _running_ad_hoc_query(room, now).with_only_columns(table)
                running = connection.execute(query).mappings().first()
                if running is None:
                    statement = table.insert().values(
                        room=room, title=title, start=start, end=end, course=course,
                        source=LectureSource.AD_HOC.value,
                    )  # fmt: skip
                    lecture_id = connection.execute(statement.returning(table.c.id)).scalar_one()
        if running is not None:
            lecture = _lecture(running)
            raise LectureRunningError(
                f"Lecture {lecture.id} {lecture.title!r} already runs in room {room!r} since "
                f"{lecture.start.isoformat()}: end it with 'aggregator lecture stop' before you "
                "start another",
                lecture,
            )
        return self.get_lecture(lecture_id)

    def stop_lecture(self, room: str, now: datetime) -> Lecture:
        """End the room's latest ad hoc lecture at ``now``, also after its planned end, and return it.

        The latest ad hoc lecture is the one with the latest start at or before ``now``.
        It is ended when it has not been stopped yet (``stopped_at`` is null) and started
        at most MAX_AD_HOC_LENGTH before ``now``.

        Raises:
            LectureNotFoundError: the room has no ad hoc lecture that started in the last
                MAX_AD_HOC_LENGTH, or its latest one has been stopped.
        """
        table = LectureRow.__table__
        latest = (
            select(table.c.id, table.c.start, table.c.end, table.c.stopped_at)
            .where(table.c.room == room, table.c.source == LectureSource.AD_HOC.value, table.c.start <= now)
            .order_by(table.c.start.desc(), table.c.id.desc())
            .limit(1)
        )
        with self._errors(f"stop the lecture in room {room!r}"), self._engine.begin() as connection:
            row = connection.execute(latest).first()
            if row is None or row.stopped_at is not None or row.start < now - MAX_AD_HOC_LENGTH:
                raise LectureNotFoundError(_not_running_message(room, row))
            # The condition on stopped_at lets only one of two concurrent stops end the lecture.
            changed = connection.execute(
                update(table)
                .where(table.c.id == row.id, table.c.stopped_at.is_(None))
                .values(end=now, stopped_at=now)
            ).rowcount
        if not changed:
            raise LectureNotFoundError(
                f"The ad hoc lecture {row.id} in room {room!r} was stopped by another command meanwhile: "
                "check it with 'aggregator lecture list'"
            )
        return self.get_lecture(row.id)

    def import_timetable(self, entries: Sequence[TimetableEntry], source: LectureSource) -> ImportResult:
        """Add the timetable's lectures, or update those imported before with the same uid.

        A lecture with the entry's room and uid is updated. Otherwise a lecture of the same
        source and uid in another room is moved to the entry's room and updated, when it is
        the only candidate and no other entry without a lecture has that uid (see
        ``_moved_lecture_id``). Otherwise the entry is added.

        Raises:
            ConfigError: an entry is invalid; nothing is stored then.
        """
        for entry in entries:
            _check_lecture(entry.room, entry.title, entry.start, entry.end)
            _check_course(entry.course)
        table = LectureRow.__table__
        keys = {(entry.room, entry.uid) for entry in entries}
        rooms = {entry.room for entry in entries}
        unmatched: list[TimetableEntry] = []
        added = 0
        count = counted(len(entries), "lecture")
        with self._errors(f"import {count}"), self._engine.begin() as connection:
            for entry in entries:
                changed = connection.execute(
                    update(table)
                    .where(table.c.room == entry.room, table.c.source_uid == entry.uid)
                    .values(**_entry_values(entry, source))
                ).rowcount
                if not changed:
                    unmatched.append(entry)
            # Two new entries with one uid could each claim the same old lecture, so neither moves it.
            unmatched_uids = Counter(entry.uid for entry in unmatched)
            for entry in unmatched:
                values = _entry_values(entry, source)
                moved_id = None
                if unmatched_uids[entry.uid] == 1:
                    moved_id = _moved_lecture_id(connection, entry, source, keys, rooms)
                if moved_id is not None:
                    moved = update(table).where(table.c.id == moved_id).values(room=entry.room, **values)
                    connection.execute(moved)
                    continue
                connection.execute(table.insert().values(room=entry.room, source_uid=entry.uid, **values))
                added += 1
        return ImportResult(added=added, updated=len(entries) - added)

    def purge_before(self, cutoff: datetime) -> PurgeResult:
        """Delete windows that start before ``cutoff``, lectures that end before it, and devices
        not seen since."""
        with self._errors(f"purge rows before {cutoff.isoformat()}"), self._engine.begin() as connection:
            windows = connection.execute(delete(WindowRow).where(WindowRow.window_start < cutoff)).rowcount
            lectures = connection.execute(delete(LectureRow).where(LectureRow.end < cutoff)).rowcount
            devices = connection.execute(delete(DeviceRow).where(DeviceRow.last_seen < cutoff)).rowcount
        return PurgeResult(windows=windows, lectures=lectures, devices=devices)

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn SQLAlchemy errors into a StoreError that names the action and the database."""
        try:
            yield
        except SQLAlchemyError as error:
            raise _store_error(f"Cannot {action} in {self.display_url}", error) from error


def parse_database_url(url: str) -> URL:
    """Parse a database URL.

    Raises:
        ConfigError: the URL is malformed, such as a port that is not a number. The
            message shows the URL with its password masked.
    """
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as error:
        # SQLAlchemy raises ValueError for a port that is not a number or an unclosed '['.
        detail = f" ({error})" if isinstance(error, ValueError) else ""
        raise ConfigError(f"Invalid database URL {_mask_password(url)!r}{detail}: use {_URL_FORMS}") from None


def _mask_password(url: str) -> str:
    # Masks everything from 'user:' to the last '@' of the text. A malformed URL may hold a
    # password with '/' or '@', so masking part of the host as well is the safe side.
    return re.sub(r"(://[^:/@]*:).*@", r"\1***@", url, count=1)


def create_store_engine(url: str) -> Engine:
    """Create the engine for ``url``, with WAL mode and a busy timeout on SQLite.

    Raises:
        ConfigError: the URL is malformed or unsupported, or the database driver is missing.
    """
    parsed = parse_database_url(url)
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
                scripts = ScriptDirectory.from_config(config)
                _check_known_revision(scripts, before, display_url)
                head = scripts.get_current_head()
                if before is not None and before != head:
                    log.warning(
                        "Upgrading the schema of %s from revision %s to %s. On a large database this "
                        "can take minutes (docs/deployment.md); do not interrupt it",
                        display_url,
                        before,
                        head,
                    )
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


def _check_known_revision(scripts: ScriptDirectory, revision: str | None, display_url: str) -> None:
    if revision is None:
        return
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
        # Every window updates the table and three indexes. With SQLite's default 2 MiB page
        # cache their pages were read again and again: inserting 200,000 windows took 19 us
        # of CPU per window instead of 14 us. The cache grows to this size only as a
        # connection touches that many pages.
        cursor.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
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


def _not_running_message(room: str, latest: Any) -> str:
    """Return why ``stop_lecture`` ends no lecture, given the room's latest ad hoc lecture or None."""
    reason = ""
    if latest is not None and latest.stopped_at is not None:
        reason = (
            f" (the latest, lecture {latest.id}, was stopped at {latest.stopped_at.isoformat(timespec='seconds')})"
        )
    elif latest is not None:
        hours = round(MAX_AD_HOC_LENGTH.total_seconds() / 3600)
        reason = (
            f" (the latest, lecture {latest.id}, started at {latest.start.isoformat()}, more than {hours} h "
            f"ago, so it keeps its planned end {latest.end.isoformat()})"
        )
    return (
        f"No ad hoc lecture runs in room {room!r} now{reason}: start one with 'aggregator lecture start', "
        "or check the room with 'aggregator lecture list'"
    )


def _entry_values(entry: TimetableEntry, source: LectureSource) -> dict[str, Any]:
    return {
        "title": entry.title,
        "start": entry.start,
        "end": entry.end,
        "course": entry.course,
        "source": source.value,
    }


def _moved_lecture_id(
    connection: Connection,
    entry: TimetableEntry,
    source: LectureSource,
    keys: set[tuple[str, str]],
    rooms: set[str],
) -> int | None:
    """Return the id of the lecture that ``entry`` moves to its room, or None to add the entry.

    The candidates have the entry's source and uid and a room that the import does not
    give that uid. An entry with a global uid may move a lecture from any room. A CSV uid
    identifies a lecture only within its room, so such an entry moves a lecture only from a
    room that this import also contains. So a file of several rooms moves a row between
    them, and a file of another room that reuses the uid leaves the lecture alone. Several
    candidates are ambiguous, so none of them moves.
    """
    table = LectureRow.__table__
    query = select(table.c.id, table.c.room).where(
        table.c.source == source.value, table.c.source_uid == entry.uid, table.c.room != entry.room
    )
    candidates = [
        row.id
        for row in connection.execute(query)
        if (row.room, entry.uid) not in keys and (entry.global_uid or row.room in rooms)
    ]
    return candidates[0] if len(candidates) == 1 else None


def _running_ad_hoc_query(room: str, now: datetime) -> Select[Any]:
    """Select the id of the latest ad hoc lecture of ``room`` that runs at ``now``."""
    table = LectureRow.__table__
    return (
        select(table.c.id)
        .where(
            table.c.room == room,
            table.c.source == LectureSource.AD_HOC.value,
            table.c.start <= now,
            table.c.end > now,
        )
        .order_by(table.c.start.desc(), table.c.id.desc())
        .limit(1)
    )


def _room_lock_key(room: str) -> int:
    # A stable signed 32-bit hash: Python's hash() differs between processes. Two rooms
    # with the same hash only wait for each other.
    return int.from_bytes(hashlib.blake2b(room.encode(), digest_size=4).digest(), "big", signed=True)


def _check_course(course: str | None) -> None:
    if course is None:
        return
    if not course.strip() or len(course) > COURSE_LENGTH or not course.isprintable():
        raise ConfigError(f"Invalid course {course!r}: use 1 to {COURSE_LENGTH} printable characters")


_WINDOW_COLUMNS = (
    "device_id, room, window_start, window_end, frames_sampled, faces_seen, min_faces, suppressed, "
    "counts, received_at"
)
_SQLITE_INSERT_WINDOWS = (
    f"INSERT INTO windows ({_WINDOW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (device_id, window_start) DO NOTHING"
)
_POSTGRESQL_INSERT_WINDOWS = (
    f"INSERT INTO windows ({_WINDOW_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s) "
    "ON CONFLICT (device_id, window_start) DO NOTHING"
)


_SQLITE_WINDOWS_IN_ROOM = (
    "SELECT device_id, window_start, window_end, frames_sampled, faces_seen, min_faces, suppressed, counts, "
    "received_at FROM windows WHERE room = ? AND window_start >= ? AND window_start < ? "
    "ORDER BY window_start, device_id"
)


def _from_sqlite_time(text: str) -> datetime:
    # Reads _sqlite_time's form, and also the same text without fraction digits.
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _sqlite_time(moment: datetime) -> str:
    # The text form of SQLAlchemy's SQLite DATETIME, which UtcDateTime reads back. The unique
    # key compares this text, so every writer must produce exactly this form.
    # isoformat with timespec="microseconds" always writes six digits; [:26] drops the offset.
    return moment.astimezone(UTC).isoformat(" ", "microseconds")[:26]


def _sqlite_window_rows(windows: Sequence[ReceivedWindow]) -> list[tuple[Any, ...]]:
    # The windows of all devices start at the same multiples of their length, and messages
    # read in one recv share their receive time, so a batch contains few distinct times,
    # and each is converted to text once.
    texts: dict[datetime, str] = {}
    rows = []
    for window in windows:
        report = window.report
        start = report.window_start
        end = report.window_end
        received_at = window.received_at
        start_text = texts.get(start) or texts.setdefault(start, _sqlite_time(start))
        end_text = texts.get(end) or texts.setdefault(end, _sqlite_time(end))
        received_text = texts.get(received_at) or texts.setdefault(received_at, _sqlite_time(received_at))
        counts = report.counts
        rows.append(
            (
                report.device_id,
                report.room,
                start_text,
                end_text,
                report.frames_sampled,
                report.faces_seen,
                report.min_faces,
                int(report.suppressed),
                _counts_json(counts) if counts is not None else None,
                received_text,
            )
        )
    return rows


def _counts_json(counts: dict[str, int]) -> str:
    # pydantic-core's serializer takes a quarter of json.dumps's time and writes the same JSON
    # without spaces. Keys are ASCII (edge_agent.payload.LABEL_PATTERN).
    return to_json(counts).decode()


def _postgresql_window_row(window: ReceivedWindow) -> tuple[Any, ...]:
    report = window.report
    return (
        report.device_id,
        report.room,
        report.window_start,
        report.window_end,
        report.frames_sampled,
        report.faces_seen,
        report.min_faces,
        report.suppressed,
        _counts_json(report.counts) if report.counts is not None else None,
        window.received_at,
    )


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
    return Lecture(
        id=row["id"],
        room=row["room"],
        title=row["title"],
        start=row["start"],
        end=row["end"],
        course=row["course"],
        source=LectureSource(row["source"]),
    )


def _store_error(message: str, error: SQLAlchemyError, hint: str = "") -> StoreError:
    # Only a value the database refuses (IntegrityError, DataError) fails again with the same
    # data. Every other database error is about the database's state: connection loss, a
    # locked SQLite file, an exhausted pool, but also a read-only transaction, a missing
    # table or a revoked privilege (InternalError, ProgrammingError on PostgreSQL). Those
    # are retried, and the windows stay unacknowledged, until an operator fixes the state.
    retryable = isinstance(error, PoolTimeoutError) or (
        isinstance(error, DBAPIError) and not isinstance(error, (IntegrityError, DataError))
    )
    detail = error.orig if isinstance(error, DBAPIError) else error
    # Driver messages span lines (libpq adds hints); the CLI prints each error as one line.
    one_line = " ".join(str(detail).split())
    lowered = one_line.lower()
    # The messages of SQLite's SQLITE_FULL and of PostgreSQL's disk_full (53100) contain these words.
    if "disk is full" in lowered or "no space left on device" in lowered:
        hint = ". Free disk space where the database and its temporary files are, then run the command again"
    return StoreError(f"{message}: {one_line}{hint}", retryable=retryable)


def _hidden(url: URL) -> str:
    return url.render_as_string(hide_password=True)
