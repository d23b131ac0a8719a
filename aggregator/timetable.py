"""Timetable import: lectures of one room from a CSV file or an iCalendar (.ics) file.

CSV: a header row with the columns ``title``, ``start`` and ``end``, and optionally
``course``, ``room`` and ``uid``. Times are ISO 8601; a time without a UTC offset is
local time in the school's zone. ``room`` defaults to the room given to the import,
``course`` to the title, and ``uid`` to the room, start and title.

iCalendar: each VEVENT is a lecture with SUMMARY as title, CATEGORIES (first value)
or else SUMMARY as course, and LOCATION or else the given room as room. Recurring
events (RRULE, RDATE, EXDATE and moved occurrences with RECURRENCE-ID) are expanded
with ``recurring_ical_events`` within [start, end). A DTSTART with a TZID keeps its
local clock time across daylight saving changes; a floating DTSTART is read in the
school's zone.
"""

from __future__ import annotations

import csv
import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from aggregator.errors import ConfigError
from aggregator.store import TimetableEntry
from aggregator.times import Zone, parse_time

log = logging.getLogger(__name__)

CSV_REQUIRED_COLUMNS = ("title", "start", "end")
# A timetable without an end date is expanded this far after its first lecture.
DEFAULT_EXPANSION_DAYS = 366


def read_csv_timetable(path: Path, room: str | None, zone: Zone) -> list[TimetableEntry]:
    """Read the lectures of a CSV timetable.

    Raises:
        ConfigError: the file is missing, lacks a column, or a row has an invalid value.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            rows = list(csv.DictReader(file))
            columns = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"Cannot read the timetable {str(path)!r}: {error}") from None
    missing = [column for column in CSV_REQUIRED_COLUMNS if column not in columns]
    if rows and missing:
        raise ConfigError(
            f"The timetable {str(path)!r} has no column {', '.join(missing)}: its header must contain "
            "title,start,end and may add course,room,uid"
        )
    entries = []
    for line, row in enumerate(rows, start=2):
        where = f"{path.name} line {line}"
        row_room = (row.get("room") or "").strip() or room
        if not row_room:
            raise ConfigError(f"{where} has no room: add a room column or give --room")
        title = (row.get("title") or "").strip()
        start = parse_time(row.get("start") or "", zone, f"{where} start")
        end = parse_time(row.get("end") or "", zone, f"{where} end")
        course = (row.get("course") or "").strip() or title
        uid = (row.get("uid") or "").strip() or f"{row_room}|{start.isoformat()}|{title}"
        entries.append(TimetableEntry(room=row_room, title=title, start=start, end=end, course=course, uid=uid))
    return entries


def read_ics_timetable(
    path: Path, room: str | None, zone: Zone, start: datetime | None = None, end: datetime | None = None
) -> list[TimetableEntry]:
    """Read the lectures of an iCalendar file, expanding recurring events within [start, end).

    Without ``start`` the expansion begins at the first event, and without ``end`` it
    stops DEFAULT_EXPANSION_DAYS later.

    Raises:
        ConfigError: the file is missing or not iCalendar, or an event lacks a start or a room.
    """
    import icalendar
    import recurring_ical_events

    try:
        calendar = icalendar.Calendar.from_ical(path.read_bytes())
    except (OSError, ValueError) as error:
        raise ConfigError(f"Cannot read the iCalendar file {str(path)!r}: {error}") from None
    events = list(calendar.walk("VEVENT"))
    if not events:
        return []
    if start is None:
        start = min(_to_utc(event.decoded("DTSTART"), zone) for event in events if "DTSTART" in event)
    if end is None:
        end = start + timedelta(days=DEFAULT_EXPANSION_DAYS)
    try:
        occurrences = recurring_ical_events.of(calendar).between(start, end)
    except Exception as error:  # the library raises several types for malformed rules
        raise ConfigError(f"Cannot expand the events of {str(path)!r}: {error}") from None

    entries = []
    for occurrence in occurrences:
        title = str(occurrence.get("SUMMARY", "")).strip()
        occurrence_room = str(occurrence.get("LOCATION", "")).strip() or room
        if not occurrence_room:
            raise ConfigError(f"Event {title!r} in {path.name} has no LOCATION: give --room")
        begins = _to_utc(occurrence.decoded("DTSTART"), zone)
        if "DTEND" in occurrence:
            finishes = _to_utc(occurrence.decoded("DTEND"), zone)
        elif "DURATION" in occurrence:
            finishes = begins + occurrence.decoded("DURATION")
        else:
            raise ConfigError(f"Event {title!r} in {path.name} has neither DTEND nor DURATION")
        uid = str(occurrence.get("UID", "")) or title
        entries.append(
            TimetableEntry(
                room=occurrence_room,
                title=title,
                start=begins,
                end=finishes,
                course=_course(occurrence) or title,
                # A recurring event yields many lectures with one UID, so the start is part of the key.
                uid=f"{uid}|{begins.isoformat()}",
            )
        )
    entries.sort(key=lambda entry: (entry.start, entry.room))
    return entries


def _course(event: object) -> str | None:
    categories = event.get("CATEGORIES")  # type: ignore[attr-defined]
    if categories is None:
        return None
    if isinstance(categories, list):
        categories = categories[0]
    values = getattr(categories, "cats", None) or []
    return str(values[0]).strip() if values else None


def _to_utc(moment: date | datetime, zone: Zone) -> datetime:
    if not isinstance(moment, datetime):
        raise ConfigError(f"All-day event on {moment.isoformat()} cannot be a lecture: give it a start time")
    if moment.tzinfo is None:
        # Floating time: the school's clock. fold=0 picks the first of a repeated hour.
        return moment.replace(tzinfo=zone.tzinfo).astimezone(UTC)
    return moment.astimezone(UTC)
