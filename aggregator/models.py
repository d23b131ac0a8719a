"""Database tables of the aggregator as SQLAlchemy 2 typed models.

The schema itself is created and changed only by the Alembic migrations in
``aggregator/migrations``. These models describe the same tables for queries, and a
test checks that both agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, PrimaryKeyConstraint, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Lengths follow the limits of edge_agent.payload: device ids and rooms are at most 64 characters.
DEVICE_ID_LENGTH = 64
ROOM_LENGTH = 64
TITLE_LENGTH = 200
COURSE_LENGTH = 200
SOURCE_UID_LENGTH = 400
STATUS_LENGTH = 16

# JSONB on PostgreSQL so that later reports can index and query labels; TEXT-backed JSON elsewhere.
# none_as_null stores Python None as SQL NULL instead of the JSON text 'null'.
CountsJSON = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class UtcDateTime(TypeDecorator[datetime]):
    """Timestamp that accepts only timezone-aware datetimes and returns them in UTC.

    PostgreSQL stores ``timestamp with time zone``. SQLite has no timestamp type, so the
    value is stored as naive UTC text, which sorts and compares in time order as long as
    every row goes through this type.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} cannot be stored: give it a time zone")
        utc_value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return utc_value.replace(tzinfo=None)
        return utc_value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class WindowRow(Base):
    """One window payload of one device, stored once however often it arrives."""

    __tablename__ = "windows"
    __table_args__ = (
        # Reports read the windows of one room in a time range, ordered by start and device,
        # and the primary key is that order. SQLite stores a WITHOUT ROWID table in the order
        # of its primary key. So a lecture's windows lie on a few adjacent pages, not on one
        # page each among those of every other room.
        PrimaryKeyConstraint("room", "window_start", "device_id", name="pk_windows"),
        UniqueConstraint("device_id", "window_start", name="uq_windows_device_id_window_start"),
        # The purge deletes the windows of every room before a cutoff.
        Index("ix_windows_window_start", "window_start"),
        {"sqlite_with_rowid": False},
    )

    room: Mapped[str] = mapped_column(String(ROOM_LENGTH))
    window_start: Mapped[datetime] = mapped_column(UtcDateTime())
    device_id: Mapped[str] = mapped_column(String(DEVICE_ID_LENGTH))
    window_end: Mapped[datetime] = mapped_column(UtcDateTime())
    frames_sampled: Mapped[int] = mapped_column(Integer)
    faces_seen: Mapped[int] = mapped_column(Integer)
    min_faces: Mapped[int] = mapped_column(Integer)
    suppressed: Mapped[bool]
    # Face detections per emotion label, or None for a suppressed window.
    counts: Mapped[dict[str, Any] | None] = mapped_column(CountsJSON)
    # Time the aggregator received the payload, UTC.
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())


class LectureRow(Base):
    """A lecture: a room and a time range that a report covers."""

    __tablename__ = "lectures"
    __table_args__ = (
        Index("ix_lectures_room_start", "room", "start"),
        Index("ix_lectures_course_start", "course", "start"),
        # A timetable imported again updates its lectures instead of adding them twice.
        UniqueConstraint("room", "source_uid", name="uq_lectures_room_source_uid"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    room: Mapped[str] = mapped_column(String(ROOM_LENGTH))
    title: Mapped[str] = mapped_column(String(TITLE_LENGTH))
    start: Mapped[datetime] = mapped_column(UtcDateTime())
    end: Mapped[datetime] = mapped_column(UtcDateTime())
    course: Mapped[str | None] = mapped_column(String(COURSE_LENGTH))
    # manual, ad-hoc, csv or ics: see aggregator.store.LectureSource.
    source: Mapped[str] = mapped_column(String(16), server_default="manual")
    # Key of the lecture in its timetable: the CSV row's uid, or the iCalendar UID (and, for an
    # occurrence of a recurring event, its original start in UTC).
    source_uid: Mapped[str | None] = mapped_column(String(SOURCE_UID_LENGTH))
    # When 'lecture stop' ended an ad hoc lecture, UTC. None while it runs, and for other sources.
    stopped_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class DeviceRow(Base):
    """An agent: when it was seen, its MQTT status and its latest statistics."""

    __tablename__ = "devices"

    device_id: Mapped[str] = mapped_column(String(DEVICE_ID_LENGTH), primary_key=True)
    room: Mapped[str | None] = mapped_column(String(ROOM_LENGTH))
    # Receive times of the first and latest message of any topic of the device, UTC.
    first_seen: Mapped[datetime] = mapped_column(UtcDateTime())
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime())
    last_window_end: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Latest text of the retained status topic: online, offline or stopped.
    status: Mapped[str | None] = mapped_column(String(STATUS_LENGTH))
    status_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Latest stats payload as received. Its fields are not fixed yet, so it is kept as text.
    stats_json: Mapped[str | None] = mapped_column(Text)
    stats_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Latest text of the retained counting topic: active or paused.
    counting: Mapped[str | None] = mapped_column(String(STATUS_LENGTH))
    counting_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
