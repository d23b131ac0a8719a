"""Timetable import: lectures of one room from a CSV file or an iCalendar (.ics) file.

CSV: a header row with the columns ``title``, ``start`` and ``end``, and optionally
``course``, ``room`` and ``uid``, separated by ``,`` or ``;`` (the one that occurs more
often in the header line, as spreadsheet programs in locales with a decimal comma write
``;``). The file is UTF-8, with or without a byte order mark, and each column occurs at
most once. A file with only a header has no lectures, and an empty file is an error. Times
are ISO 8601; a time without a UTC offset is local time in the school's zone. ``room``
defaults to the room given to the import, ``course`` to the title, and ``uid`` to the
room, start and title. Two rows with the same room and uid are an error, because the
second would overwrite the first.

iCalendar: each VEVENT is a lecture with SUMMARY as title, CATEGORIES (first value)
or else SUMMARY as course, and LOCATION or else the given room as room. Recurring
events (RRULE, RDATE, EXDATE and moved occurrences with RECURRENCE-ID) are expanded
with ``recurring_ical_events``, and an occurrence is imported when its actual start lies
in [start, end), so a moved occurrence counts where it was moved to. A DTSTART with a
TZID keeps its local clock time across daylight saving changes; a floating DTSTART is
read in the school's zone. Every occurrence lasts as long as the event's first instance
in exact time (RFC 5545, section 3.8.5.3, for DTEND), so an occurrence on the day of a
daylight saving change is not an hour longer or shorter. A local time that a daylight saving
change skips is read with the UTC offset before the gap (RFC 5545, section 3.3.5). An
event may have at most MAX_OCCURRENCES_PER_EVENT occurrences that start in the import
range.

The key of an iCalendar lecture (its ``uid`` in the store) is the event's UID for a
single event, so an event that moves keeps its lecture. For an occurrence of a
recurring event it is the UID and the occurrence's original start in UTC (its
RECURRENCE-ID), ``UID|2026-03-16T08:00:00+00:00``. Earlier versions keyed single
events by UID and start as well, and ``adopt_earlier_uids`` renames such lectures.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Table, select, update
from sqlalchemy.exc import SQLAlchemyError

from aggregator.errors import ConfigError, StoreError
from aggregator.models import COURSE_LENGTH, ROOM_LENGTH, SOURCE_UID_LENGTH, TITLE_LENGTH, LectureRow
from aggregator.plural import counted
from aggregator.store import LectureSource, Store, TimetableEntry
from aggregator.times import Zone, parse_time

log = logging.getLogger(__name__)

CSV_REQUIRED_COLUMNS = ("title", "start", "end")
CSV_COLUMNS = (*CSV_REQUIRED_COLUMNS, "course", "room", "uid")
CSV_DELIMITERS = {",": "commas", ";": "semicolons"}
CSV_BYTE_ORDER_MARK = b"\xef\xbb\xbf"
CSV_ENCODING_HINT = (
    "save it as UTF-8, in Excel with 'Save As' and the type 'CSV UTF-8 (Comma delimited)', "
    "in LibreOffice with the character set 'Unicode (UTF-8)'"
)
CSV_HEADER_HINT = (
    "its header must contain title,start,end and may add course,room,uid, separated by ',' or ';'"
)
# A timetable without an end date is expanded this far after its first lecture.
DEFAULT_EXPANSION_DAYS = 366
# The expansion reads a day more on each side of the import range, because
# recurring_ical_events compares a floating time with the UTC clock time of the range's
# bounds, and a UTC offset is less than a day. Only occurrences that start in the range
# are imported.
EXPANSION_MARGIN = timedelta(days=1)
# Occurrences of one event that may start in the import range: a daily lecture for ten
# years fits. Each expanded occurrence costs about 2 KiB while it is read (measured with
# recurring-ical-events 3.8), so the cap keeps a rule such as FREQ=MINUTELY from filling
# the memory.
MAX_OCCURRENCES_PER_EVENT = 5000
# Occurrences of one rule from its DTSTART to the end of the import range. The expansion
# generates and caches all of them (an estimated 60 bytes each), also those before the range.
MAX_RULE_OCCURRENCES = 200_000
# The stored key of an occurrence adds "|" and a UTC time of 25 characters to the UID.
MAX_EVENT_UID_LENGTH = SOURCE_UID_LENGTH - len("|2026-03-16T08:00:00+00:00")
# Years of DTSTART and DTEND: 1900 admits old yearly events, and both bounds keep the
# conversion to UTC far from overflowing.
MIN_EVENT_YEAR = 1900
MAX_EVENT_YEAR = 9000
# Values longer than this are shortened in error messages.
MESSAGE_VALUE_LENGTH = 60
# Properties that the import reads; an unreadable value of any of them rejects the event.
ICS_PROPERTIES = (
    "UID", "SUMMARY", "LOCATION", "CATEGORIES", "DTSTART", "DTEND", "DURATION",
    "RRULE", "RDATE", "EXDATE", "RECURRENCE-ID",
)  # fmt: skip
ICS_TIME_PROPERTIES = ("DTSTART", "DTEND", "RECURRENCE-ID", "RDATE", "EXDATE")
ICS_EXAMPLES = {
    "DTSTART": "20260316T090000", "DTEND": "20260316T103000", "DURATION": "PT1H30M",
    "RRULE": "FREQ=WEEKLY;COUNT=12", "RDATE": "20260316T090000", "EXDATE": "20260316T090000",
    "RECURRENCE-ID": "20260316T090000",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class IcsTimetable:
    """Lectures of an iCalendar file, and the uids that earlier versions gave some of them.

    ``earlier_uids`` maps (room, uid) to the uid that versions before the UID-based keys
    stored, for the lectures whose key changed.
    """

    entries: list[TimetableEntry]
    earlier_uids: dict[tuple[str, str], str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EventLengths:
    """Exact lengths of the events of one iCalendar file, which set the end of each occurrence.

    ``series`` maps a UID to the exact length of its event's first instance, and leaves out
    a UID that several events without RECURRENCE-ID share. ``modified`` maps a UID and a
    RECURRENCE-ID in UTC to the length of the event that moves that occurrence.
    ``period_ends`` maps a UID and a start in UTC to the end of an RDATE period.
    """

    series: dict[str, timedelta]
    modified: dict[tuple[str, datetime], timedelta]
    period_ends: dict[tuple[str, datetime], datetime]


def shorten(text: str, limit: int = MESSAGE_VALUE_LENGTH) -> str:
    """Return ``text`` quoted, cut to ``limit`` characters with its length added when it is longer."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def check_lecture_fields(where: str, room: str, title: str, course: str | None) -> None:
    """Check room, title and course against the store's limits; errors start with ``where``.

    The store checks the same limits, but its messages show the whole value and no line.

    Raises:
        ConfigError: a value is empty, too long or has unprintable characters.
    """
    if not room or len(room) > ROOM_LENGTH or room != room.strip() or not room.isprintable():
        raise ConfigError(
            f"{where}: invalid room {shorten(room)}: use 1 to {ROOM_LENGTH} printable characters without "
            "leading or trailing spaces, as in the agents' config"
        )
    if not title.strip() or len(title) > TITLE_LENGTH or not title.isprintable():
        raise ConfigError(
            f"{where}: invalid title {shorten(title)}: use 1 to {TITLE_LENGTH} printable characters"
        )
    if course is not None and (not course.strip() or len(course) > COURSE_LENGTH or not course.isprintable()):
        raise ConfigError(
            f"{where}: invalid course {shorten(course)}: use 1 to {COURSE_LENGTH} printable characters"
        )


def read_csv_timetable(path: Path, room: str | None, zone: Zone) -> list[TimetableEntry]:
    """Read the lectures of a CSV timetable. A file with only a header has none.

    Raises:
        ConfigError: the file is missing, empty or not UTF-8, has an unknown, missing or
            repeated column, a row has an invalid value, or two rows have the same room and
            uid. Messages name the line.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"Cannot read the timetable {str(path)!r}: {error}") from None
    text = _decode_csv(path, data)
    if not text.strip():
        raise ConfigError(f"The timetable {str(path)!r} is empty: {CSV_HEADER_HINT}")
    delimiter = _csv_delimiter(text.splitlines()[0])
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        # Spreadsheets often write 'Title' or ' Start'; column names match in lowercase, stripped.
        written = list(reader.fieldnames or [])
        reader.fieldnames = [name.strip().lower() for name in written]
        # line_num after a row is the file line where the row ends; rows may span lines.
        rows = [(reader.line_num, row) for row in reader]
        columns = reader.fieldnames or []
    except csv.Error as error:
        raise ConfigError(f"Cannot read the timetable {str(path)!r}: {error}") from None
    if not columns:
        raise ConfigError(f"The first line of the timetable {str(path)!r} is empty: {CSV_HEADER_HINT}")
    _check_csv_columns(path, columns, written)

    entries = []
    first_line: dict[tuple[str, str], int] = {}
    for line, row in rows:
        where = f"{path.name} line {line}"
        if row.get(None):  # type: ignore[call-overload]
            raise ConfigError(
                f"{where} has more cells than the header has columns: quote cells that contain "
                f"{CSV_DELIMITERS[delimiter]}"
            )
        entry = _csv_entry(row, where, room, zone)
        key = (entry.room, entry.uid)
        if key in first_line:
            raise ConfigError(_duplicate_row_message(path, first_line[key], line, entry, "uid" in columns))
        first_line[key] = line
        entries.append(entry)
    return entries


def _decode_csv(path: Path, data: bytes) -> str:
    """Decode a CSV file as UTF-8 without its byte order mark.

    Raises:
        ConfigError: the file is not UTF-8. The message names the byte offset and line of
            the first invalid byte; spreadsheet programs on Windows save CSV as cp1252.
    """
    offset = len(CSV_BYTE_ORDER_MARK) if data.startswith(CSV_BYTE_ORDER_MARK) else 0
    try:
        return data[offset:].decode("utf-8")
    except UnicodeDecodeError as error:
        position = offset + error.start
        line = data.count(b"\n", 0, position) + 1
        raise ConfigError(
            f"The timetable {str(path)!r} is not UTF-8: byte {position} (line {line}) is "
            f"0x{data[position]:02x}, invalid in UTF-8, as in a file saved as Windows-1252: "
            f"{CSV_ENCODING_HINT}"
        ) from None


def _csv_delimiter(header_line: str) -> str:
    # Column names contain neither character, so the header line shows the separator.
    return ";" if header_line.count(";") > header_line.count(",") else ","


def _check_csv_columns(path: Path, columns: Iterable[str], written: Sequence[str]) -> None:
    """Check the lowercase column names; messages show the ``written`` ones."""
    columns = list(columns)
    repeated = sorted({column for column in columns if columns.count(column) > 1})
    if repeated:
        names = ", ".join(shorten(column) for column in repeated)
        raise ConfigError(
            f"The timetable {str(path)!r} has the column {names} more than once: keep one column of each "
            "name, because the import cannot tell which one holds the value"
        )
    unknown = [name for column, name in zip(columns, written, strict=True) if column not in CSV_COLUMNS]
    if unknown:
        names = ", ".join(shorten(column) for column in unknown)
        raise ConfigError(f"The timetable {str(path)!r} has unknown columns {names}: {CSV_HEADER_HINT}")
    missing = [column for column in CSV_REQUIRED_COLUMNS if column not in columns]
    if missing:
        raise ConfigError(
            f"The timetable {str(path)!r} has no column {', '.join(missing)}: {CSV_HEADER_HINT}"
        )


def _csv_entry(row: dict[str, str], where: str, room: str | None, zone: Zone) -> TimetableEntry:
    row_room = (row.get("room") or "").strip() or room
    if not row_room:
        raise ConfigError(f"{where} has no room: add a room column or give --room")
    title = (row.get("title") or "").strip()
    course = (row.get("course") or "").strip() or title
    check_lecture_fields(where, row_room, title, course)
    start_text = row.get("start") or ""
    end_text = row.get("end") or ""
    start = parse_time(start_text, zone, f"{where} start")
    end = parse_time(end_text, zone, f"{where} end")
    if end <= start:
        raise ConfigError(
            f"{where}: end {end_text!r} is not after start {start_text!r}: correct or swap them"
        )
    uid = (row.get("uid") or "").strip() or f"{row_room}|{start.isoformat()}|{title}"
    if len(uid) > SOURCE_UID_LENGTH:
        raise ConfigError(
            f"{where}: uid {shorten(uid)} is too long: use at most {SOURCE_UID_LENGTH} characters"
        )
    return TimetableEntry(room=row_room, title=title, start=start, end=end, course=course, uid=uid)


def _duplicate_row_message(path: Path, first: int, second: int, entry: TimetableEntry, has_uids: bool) -> str:
    lines = f"{path.name} lines {first} and {second}"
    if has_uids:
        return (
            f"{lines} have the same uid {shorten(entry.uid)} in room {entry.room!r}, so the second would "
            "overwrite the first: give each lecture its own uid"
        )
    return (
        f"{lines} are the same lecture (room {entry.room!r}, start {entry.start.isoformat()}, title "
        f"{shorten(entry.title)}): delete one of them"
    )


def read_ics_timetable(
    path: Path, room: str | None, zone: Zone, start: datetime | None = None, end: datetime | None = None
) -> IcsTimetable:
    """Read the lectures of an iCalendar file that start in [start, end), expanding recurring events.

    Without ``start`` the expansion begins at the first event, and without ``end`` it
    stops DEFAULT_EXPANSION_DAYS later. Returns the lectures by start time, and the
    uids that earlier versions gave those whose key changed (see the module docstring).

    Raises:
        ConfigError: the file is missing or not iCalendar, the range is empty, or an event
            lacks a start or a room, has an invalid or unknown value, or too many occurrences.
    """
    import icalendar
    import recurring_ical_events

    try:
        calendar = icalendar.Calendar.from_ical(path.read_bytes())
    except (OSError, ValueError) as error:
        # icalendar's message quotes the unreadable line, which may be long or binary.
        detail = shorten(" ".join(str(error).split()), 160)
        raise ConfigError(f"Cannot read the iCalendar file {str(path)!r}: {detail}") from None
    events = list(calendar.walk("VEVENT"))
    if not events:
        return IcsTimetable(entries=[])
    for event in events:
        _check_event(event, path, zone)
    if start is None:
        start = min(_local_to_utc(event.decoded("DTSTART"), zone) for event in events)
    if end is None:
        end = start + timedelta(days=DEFAULT_EXPANSION_DAYS)
    if end <= start:
        raise ConfigError(
            f"The import range of {path.name} ends at {end.isoformat()}, not after its start "
            f"{start.isoformat()} (--from, else the first event's DTSTART): give a later --to"
        )
    for event in events:
        if "RRULE" in event:
            _check_occurrence_count(event, path, zone, start, end)
    try:
        expansion = recurring_ical_events.of(calendar)
        occurrences = expansion.between(start - EXPANSION_MARGIN, end + EXPANSION_MARGIN)
    except Exception as error:  # the library raises several types for malformed rules
        raise ConfigError(f"Cannot expand the events of {str(path)!r}: {error}") from None

    recurring = _recurring_uids(events)
    lengths = _event_lengths(events, zone)
    timetable = IcsTimetable(entries=[])
    for occurrence in occurrences:
        # The library also returns occurrences that start before the range and end in it.
        if not start <= _local_to_utc(occurrence.decoded("DTSTART"), zone) < end:
            continue
        entry, earlier_uid = _ics_entry(occurrence, path, room, zone, recurring, lengths)
        timetable.entries.append(entry)
        if earlier_uid != entry.uid:
            timetable.earlier_uids[(entry.room, entry.uid)] = earlier_uid
    _check_unique_ics_keys(timetable.entries, path)
    timetable.entries.sort(key=lambda entry: (entry.start, entry.room))
    return timetable


def _ics_entry(
    occurrence: Any, path: Path, room: str | None, zone: Zone, recurring: set[str], lengths: EventLengths
) -> tuple[TimetableEntry, str]:
    title = str(occurrence.get("SUMMARY", "")).strip()
    event_uid = str(occurrence.get("UID", "")).strip()
    name = _event_name(title, event_uid, path)
    if len(event_uid) > MAX_EVENT_UID_LENGTH:
        raise ConfigError(
            f"{name} has a UID of {len(event_uid)} characters: use at most {MAX_EVENT_UID_LENGTH}"
        )
    occurrence_room = str(occurrence.get("LOCATION", "")).strip() or room
    if not occurrence_room:
        raise ConfigError(f"{name} has no LOCATION: give --room")
    begins = _to_utc(occurrence.decoded("DTSTART"), zone, name)
    finishes = _occurrence_end(occurrence, event_uid, begins, lengths, zone)
    if finishes <= begins:
        raise ConfigError(
            f"{name} on {begins.isoformat()} does not end after it starts: correct its DTEND or DURATION"
        )
    course = _course(occurrence) or title
    check_lecture_fields(name, occurrence_room, title, course)

    # Earlier versions keyed every occurrence by UID (or title) and start.
    earlier_uid = f"{event_uid or title}|{begins.isoformat()}"
    if not event_uid:
        # Without a UID nothing identifies the event across imports but its title and start.
        uid = earlier_uid
    elif event_uid in recurring:
        # The library sets RECURRENCE-ID on every occurrence: the original start, also of a moved one.
        original = occurrence.decoded("RECURRENCE-ID") if "RECURRENCE-ID" in occurrence else begins
        uid = f"{event_uid}|{_to_utc(original, zone, name).isoformat()}"
    else:
        uid = event_uid
    entry = TimetableEntry(
        room=occurrence_room, title=title, start=begins, end=finishes, course=course, uid=uid,
        global_uid=bool(event_uid),
    )  # fmt: skip
    return entry, earlier_uid


def _event_lengths(events: list[Any], zone: Zone) -> EventLengths:
    lengths = EventLengths(series={}, modified={}, period_ends={})
    shared_uids: set[str] = set()
    for event in events:
        uid = str(event.get("UID", "")).strip()
        length = _exact_length(event, zone)
        if "RECURRENCE-ID" in event:
            original = _local_to_utc(event.decoded("RECURRENCE-ID"), zone)
            lengths.modified[(uid, original)] = length
            continue
        if uid in lengths.series:
            shared_uids.add(uid)
        lengths.series[uid] = length
        for value in _values(event.get("RDATE")):
            for period in (item.dt for item in value.dts):
                if isinstance(period, tuple):
                    period_start = _local_to_utc(period[0], zone)
                    period_end = period[1]
                    if isinstance(period_end, timedelta):
                        lengths.period_ends[(uid, period_start)] = period_start + period_end
                    else:
                        lengths.period_ends[(uid, period_start)] = _local_to_utc(period_end, zone)
    for uid in shared_uids:
        del lengths.series[uid]
    return lengths


def _exact_length(event: Any, zone: Zone) -> timedelta:
    # _check_event_end has checked that the event has DTEND or DURATION. A DURATION in
    # days is nominal in RFC 5545 but is taken as exact here, as no lecture lasts days.
    if "DTEND" in event:
        return _local_to_utc(event.decoded("DTEND"), zone) - _local_to_utc(event.decoded("DTSTART"), zone)
    return event.decoded("DURATION")


def _occurrence_end(
    occurrence: Any, uid: str, begins: datetime, lengths: EventLengths, zone: Zone
) -> datetime:
    """Return the end of an occurrence that starts at ``begins``, in UTC.

    recurring_ical_events (3.8) copies the event's length on the local clock, so on the day
    of a daylight saving change an occurrence would be an hour longer or shorter. RFC 5545
    (section 3.8.5.3) gives every occurrence the exact length of the first instance, and a
    moved occurrence or an RDATE period its own.
    """
    if "RECURRENCE-ID" in occurrence:
        original = _local_to_utc(occurrence.decoded("RECURRENCE-ID"), zone)
        length = lengths.modified.get((uid, original))
        if length is not None:
            return begins + length
    period_end = lengths.period_ends.get((uid, begins))
    if period_end is not None:
        return period_end
    length = lengths.series.get(uid)
    if length is None:
        # Several events share the UID, so the occurrence's event is unknown: its length on
        # the local clock is exact unless its first instance spans a daylight saving change.
        if "DTEND" in occurrence:
            first = occurrence.decoded("DTSTART")
            length = occurrence.decoded("DTEND").replace(tzinfo=None) - first.replace(tzinfo=None)
        else:
            length = occurrence.decoded("DURATION")
    return begins + length


def _check_unique_ics_keys(entries: list[TimetableEntry], path: Path) -> None:
    seen: set[tuple[str, str]] = set()
    for entry in entries:
        key = (entry.room, entry.uid)
        if key in seen:
            raise ConfigError(
                f"{path.name} has two events in room {entry.room!r} with the same key {shorten(entry.uid)} "
                "(UID, else title and start): give each event its own UID"
            )
        seen.add(key)


def _recurring_uids(events: list[Any]) -> set[str]:
    recurring = set()
    for event in events:
        if any(name in event for name in ("RRULE", "RDATE", "RECURRENCE-ID")):
            recurring.add(str(event.get("UID", "")).strip())
    return recurring


def _event_name(title: str, uid: str, path: Path) -> str:
    uid_part = f" (UID {shorten(uid)})" if uid else ""
    return f"Event {shorten(title)}{uid_part} in {path.name}"


def _check_event(event: Any, path: Path, zone: Zone) -> None:
    """Reject an event whose start or end is missing, unreadable or reversed, or whose TZID is unknown."""
    name = _event_name(str(event.get("SUMMARY", "")).strip(), str(event.get("UID", "")).strip(), path)
    for prop, message in getattr(event, "errors", []):
        if prop in ICS_PROPERTIES:
            example = ICS_EXAMPLES.get(prop)
            fix = f"correct it, for example to {prop}:{example}" if example else "correct it"
            raise ConfigError(f"{name} has an invalid {prop} ({shorten(str(message), 120)}): {fix}")
    if "DTSTART" not in event:
        raise ConfigError(f"{name} has no DTSTART: give every event a start time")
    for prop in ICS_TIME_PROPERTIES:
        for value in _values(event.get(prop)):
            zone_id = value.params.get("TZID")
            if zone_id and any(_is_naive(moment) for moment in _moments(value)):
                # icalendar reads a time whose TZID it cannot resolve as floating time.
                raise ConfigError(
                    f"{name} has an unknown time zone TZID={shorten(str(zone_id))} in {prop}: use an IANA "
                    "name such as Europe/Berlin, or add a VTIMEZONE with that TZID to the file"
                )
    _check_event_years(event, name)
    _check_event_end(event, name, zone)


def _check_event_years(event: Any, name: str) -> None:
    for prop in ("DTSTART", "DTEND"):
        if prop not in event:
            continue
        moment = event.decoded(prop)
        if not MIN_EVENT_YEAR <= moment.year <= MAX_EVENT_YEAR:
            raise ConfigError(
                f"{name} has {prop} {moment.isoformat()}, out of range: use a year from {MIN_EVENT_YEAR} "
                f"to {MAX_EVENT_YEAR}"
            )


def _check_event_end(event: Any, name: str, zone: Zone) -> None:
    # recurring_ical_events swaps a DTEND before DTSTART and gives an event without an end
    # zero length, so these checks run on the event as written.
    if "DTEND" not in event and "DURATION" not in event:
        raise ConfigError(f"{name} has neither DTEND nor DURATION: give it an end")
    begins = event.decoded("DTSTART")
    if "DTEND" in event:
        finishes = event.decoded("DTEND")
        if isinstance(begins, datetime) and isinstance(finishes, datetime):
            if _local_to_utc(finishes, zone) <= _local_to_utc(begins, zone):
                raise ConfigError(
                    f"{name} has DTEND {finishes.isoformat()}, not after its DTSTART {begins.isoformat()}: "
                    "correct or swap them"
                )
    elif event.decoded("DURATION") <= timedelta(0):
        raise ConfigError(f"{name} has a DURATION that is not positive: give its length, such as PT1H30M")


def _check_occurrence_count(event: Any, path: Path, zone: Zone, start: datetime, end: datetime) -> None:
    """Count the occurrences of the event's rules without keeping them, and reject too many.

    Counting runs on the local clock of DTSTART, as RRULE does. Times from EXDATE are
    still counted, so the count is an upper bound.
    """
    from dateutil.rrule import rrulestr

    name = _event_name(str(event.get("SUMMARY", "")).strip(), str(event.get("UID", "")).strip(), path)
    first = event.decoded("DTSTART")
    if isinstance(first, datetime):
        rule_zone: tzinfo = first.tzinfo or zone.tzinfo
        local_first = first.replace(tzinfo=None)
    else:
        rule_zone = zone.tzinfo
        local_first = datetime.combine(first, time())
    range_start = start.astimezone(rule_zone).replace(tzinfo=None)
    range_end = end.astimezone(rule_zone).replace(tzinfo=None)

    in_range = sum(len(value.dts) for value in _values(event.get("RDATE")))
    for rule_value in _values(event.get("RRULE")):
        text = rule_value.to_ical().decode()
        try:
            # ignoretz reads UNTIL on the same local clock as DTSTART; the count needs no more precision.
            rule = rrulestr(text, dtstart=local_first, ignoretz=True, cache=False)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{name} has an invalid RRULE {shorten(text)}: {error}") from None
        for generated, moment in enumerate(rule, start=1):
            if moment >= range_end:
                break
            if generated > MAX_RULE_OCCURRENCES:
                raise ConfigError(
                    f"{name}: its RRULE {shorten(text)} repeats more than {MAX_RULE_OCCURRENCES} times from "
                    f"its DTSTART {first.isoformat()} to the end of the import range {end.isoformat()}: "
                    "give the rule a COUNT or UNTIL, or the event a later DTSTART"
                )
            if moment < range_start:
                continue
            in_range += 1
            if in_range > MAX_OCCURRENCES_PER_EVENT:
                raise ConfigError(
                    f"{name} has more than {MAX_OCCURRENCES_PER_EVENT} occurrences from {start.isoformat()} "
                    f"to {end.isoformat()} (RRULE {shorten(text)}), the limit per event: narrow the range "
                    "with --from and --to, or correct the rule"
                )


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _moments(value: Any) -> list[Any]:
    # A DTSTART-like property contains one value in .dt. RDATE and EXDATE contain a list in
    # .dts, and an RDATE period in that list is a (start, end or duration) tuple.
    if hasattr(value, "dts"):
        moments = [item.dt for item in value.dts]
    else:
        moments = [value.dt]
    return [moment[0] if isinstance(moment, tuple) else moment for moment in moments]


def _is_naive(moment: Any) -> bool:
    return isinstance(moment, datetime) and moment.tzinfo is None


def _course(event: object) -> str | None:
    categories = event.get("CATEGORIES")  # type: ignore[attr-defined]
    if categories is None:
        return None
    if isinstance(categories, list):
        categories = categories[0]
    values = getattr(categories, "cats", None) or []
    return str(values[0]).strip() if values else None


def _local_to_utc(moment: date | datetime, zone: Zone) -> datetime:
    # For comparisons only: an all-day event counts from midnight, and _ics_entry rejects
    # one that starts in the import range.
    if not isinstance(moment, datetime):
        moment = datetime.combine(moment, time())
    if moment.tzinfo is None:
        return moment.replace(tzinfo=zone.tzinfo).astimezone(UTC)
    return moment.astimezone(UTC)


def _to_utc(moment: date | datetime, zone: Zone, name: str) -> datetime:
    if not isinstance(moment, datetime):
        raise ConfigError(
            f"{name} is an all-day event on {moment.isoformat()}, not a lecture: give it a start time"
        )
    if moment.tzinfo is None:
        # Floating time: the school's clock. fold=0 picks the first of a repeated hour.
        return moment.replace(tzinfo=zone.tzinfo).astimezone(UTC)
    return moment.astimezone(UTC)


def adopt_earlier_uids(store: Store, timetable: IcsTimetable) -> int:
    """Rename lectures that an earlier version imported under the old key of a single event.

    A lecture stored under the earlier uid of an entry (UID and start) gets the entry's
    uid, so importing the same file again updates it instead of adding a second lecture.
    When the event moved before this import, the old start is unknown: a single lecture of
    the room whose uid starts with ``UID|`` is taken then, and several are left alone.
    Returns the number of lectures renamed.
    """
    if not timetable.earlier_uids:
        return 0
    table = LectureRow.__table__
    renamed = 0
    try:
        with store.engine.begin() as connection:
            renamed = _rename_earlier_uids(connection, table, timetable)
    except SQLAlchemyError as error:
        detail = " ".join(str(error).split())
        raise StoreError(
            f"Cannot rename the lectures of earlier imports in {store.display_url}: {detail}"
        ) from error
    if renamed:
        log.info(
            "Renamed %s from the keys of earlier versions to their event UIDs",
            counted(renamed, "lecture"),
        )
    return renamed


def _rename_earlier_uids(connection: Connection, table: Table, timetable: IcsTimetable) -> int:
    renamed = 0
    for entry in timetable.entries:
        earlier_uid = timetable.earlier_uids.get((entry.room, entry.uid))
        if earlier_uid is None:
            continue
        in_room = (table.c.room == entry.room) & (table.c.source == LectureSource.ICS.value)
        current = connection.execute(select(table.c.id).where(in_room, table.c.source_uid == entry.uid))
        if current.first() is not None:
            continue
        candidates = connection.execute(
            select(table.c.id).where(in_room, table.c.source_uid == earlier_uid)
        ).scalars().all()
        # A single event's earlier uid is its UID and start; a moved occurrence's is not.
        single_event = earlier_uid == f"{entry.uid}|{entry.start.isoformat()}"
        if not candidates and single_event:
            same_uid = table.c.source_uid.startswith(f"{entry.uid}|", autoescape=True)
            candidates = connection.execute(select(table.c.id).where(in_room, same_uid)).scalars().all()
        if len(candidates) != 1:
            continue
        connection.execute(update(table).where(table.c.id == candidates[0]).values(source_uid=entry.uid))
        renamed += 1
    return renamed
