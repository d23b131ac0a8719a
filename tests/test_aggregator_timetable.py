"""Timetable import from CSV and iCalendar, ad hoc lectures, and purge, through the CLI."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event

from aggregator import timetable
from aggregator.cli import main
from aggregator.errors import LectureNotFoundError
from aggregator.store import (
    MAX_AD_HOC_LENGTH,
    Lecture,
    LectureRunningError,
    LectureSource,
    Store,
    TimetableEntry,
)
from tests.test_aggregator_helpers import assert_one_error, make_window, received
from tests.test_aggregator_postgres import postgres_url  # noqa: F401  (fixture)

ICS = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//classroom-emotion-stats tests//EN
BEGIN:VEVENT
UID:algebra@school.example
DTSTAMP:20260101T000000Z
SUMMARY:Linear Algebra
CATEGORIES:MATH-101
DTSTART;TZID=Europe/Berlin:20260316T090000
DTEND;TZID=Europe/Berlin:20260316T103000
RRULE:FREQ=WEEKLY;COUNT=4
EXDATE;TZID=Europe/Berlin:20260323T090000
END:VEVENT
BEGIN:VEVENT
UID:seminar@school.example
DTSTAMP:20260101T000000Z
SUMMARY:Seminar
DTSTART:20260317T140000
DURATION:PT45M
END:VEVENT
END:VCALENDAR
"""


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'aggregator.db'}"


def test_ics_recurring_across_dst(tmp_path: Path, db_url: str) -> None:
    path = tmp_path / "b101.ics"
    path.write_text(ICS)

    assert main(["lecture", "import", str(path), "--room", "B-101", "--tz", "Europe/Berlin", "--db", db_url]) == 0

    with Store.open(db_url) as store:
        lectures = store.list_lectures(room="B-101")
    algebra = [lecture for lecture in lectures if lecture.title == "Linear Algebra"]
    # COUNT=4 minus the EXDATE; 09:00 Berlin is 08:00 UTC before 29 March and 07:00 after.
    assert [lecture.start for lecture in algebra] == [
        datetime(2026, 3, 16, 8, 0, tzinfo=UTC),
        datetime(2026, 3, 30, 7, 0, tzinfo=UTC),
        datetime(2026, 4, 6, 7, 0, tzinfo=UTC),
    ]
    assert all(lecture.duration_s == 5400 for lecture in algebra)
    assert {lecture.course for lecture in algebra} == {"MATH-101"}
    assert {lecture.source for lecture in lectures} == {LectureSource.ICS}
    [seminar] = [lecture for lecture in lectures if lecture.title == "Seminar"]
    # Floating time: read in --tz (UTC+01:00 on 17 March).
    assert seminar.start == datetime(2026, 3, 17, 13, 0, tzinfo=UTC)
    assert seminar.end - seminar.start == timedelta(minutes=45)


def test_ics_import_twice_updates(tmp_path: Path, db_url: str, capsys) -> None:
    path = tmp_path / "b101.ics"
    path.write_text(ICS)
    arguments = ["lecture", "import", str(path), "--room", "B-101", "--tz", "Europe/Berlin", "--db", db_url]

    assert main(arguments) == 0
    path.write_text(ICS.replace("SUMMARY:Seminar", "SUMMARY:Seminar (moved)"))
    assert main(arguments) == 0

    assert "0 lectures added, 4 updated" in capsys.readouterr().err
    with Store.open(db_url) as store:
        titles = sorted(lecture.title for lecture in store.list_lectures())
    assert titles == ["Linear Algebra"] * 3 + ["Seminar (moved)"]


def test_csv_import(tmp_path: Path, db_url: str) -> None:
    path = tmp_path / "timetable.csv"
    path.write_text(
        "title,start,end,course\n"
        "Physics,2026-10-24T10:00,2026-10-24T11:30,PHY-1\n"
        "Physics,2026-10-31T10:00,2026-10-31T11:30,PHY-1\n"
    )

    assert main(["lecture", "import", str(path), "--room", "C-2", "--tz", "Europe/Berlin", "--db", db_url]) == 0

    with Store.open(db_url) as store:
        lectures = store.list_lectures(course="PHY-1")
    # Europe/Berlin leaves summer time on 25 October 2026.
    assert [lecture.start for lecture in lectures] == [
        datetime(2026, 10, 24, 8, 0, tzinfo=UTC),
        datetime(2026, 10, 31, 9, 0, tzinfo=UTC),
    ]
    assert {lecture.room for lecture in lectures} == {"C-2"}


def test_csv_missing_column(tmp_path: Path, db_url: str, capsys) -> None:
    path = tmp_path / "timetable.csv"
    path.write_text("title,start\nPhysics,2026-10-24T10:00\n")

    assert main(["lecture", "import", str(path), "--room", "C-2", "--db", db_url]) == 2

    error = capsys.readouterr().err
    assert "no column end" in error
    assert "timetable.csv" in error


def test_lecture_start_and_stop(db_url: str, capsys) -> None:
    assert main(["lecture", "start", "--room", "B-101", "--title", "Q&A", "--db", db_url, "--tz", "UTC"]) == 0
    lecture_id = int(capsys.readouterr().out)

    assert main(["lecture", "stop", "--room", "B-101", "--db", db_url, "--tz", "UTC"]) == 0

    with Store.open(db_url) as store:
        lecture = store.get_lecture(lecture_id)
    assert lecture.source is LectureSource.AD_HOC
    assert lecture.end <= datetime.now(UTC)
    assert lecture.duration_s < 60
    assert main(["lecture", "stop", "--room", "B-101", "--db", db_url]) == 2
    assert "No ad hoc lecture runs in room 'B-101'" in capsys.readouterr().err


def test_purge_retention(db_url: str, capsys) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    old = now - timedelta(days=40)
    with Store.open(db_url) as store:
        store.insert_windows([received(make_window("cam-1", old, {"happy": 1})), received(make_window("cam-1", now, {"sad": 1}))])
        store.add_lecture("B-101", "Old", old, old + timedelta(hours=1))
        store.add_lecture("B-101", "New", now, now + timedelta(hours=1))

    assert main(["purge", "--retention-days", "30", "--db", db_url]) == 0

    assert "1 window, 1 lecture, 0 devices" in capsys.readouterr().err
    with Store.open(db_url) as store:
        assert store.count_windows() == 1
        assert [lecture.title for lecture in store.list_lectures()] == ["New"]


def calendar(*events: str) -> str:
    """Return an iCalendar file with these VEVENT bodies, each without BEGIN and END lines."""
    blocks = "".join(f"BEGIN:VEVENT\nDTSTAMP:20260101T000000Z\n{body.strip()}\nEND:VEVENT\n" for body in events)
    return f"BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//classroom-emotion-stats tests//EN\n{blocks}END:VCALENDAR\n"


def import_file(capsys, db_url: str, path: Path, *options: str) -> tuple[int, str]:
    exit_code = main(["lecture", "import", str(path), "--room", "B-101", "--tz", "Europe/Berlin", "--db", db_url,
                      *options])  # fmt: skip
    return exit_code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("body", "parts"),
    [
        (
            "UID:nostart@x\nSUMMARY:No start\nDTEND:20260316T090000Z",
            ["Event 'No start' (UID 'nostart@x') in bad.ics has no DTSTART"],
        ),
        (
            "UID:badstart@x\nSUMMARY:Bad start\nDTSTART:2026-03-16 09:00\nDTEND:20260316T100000Z",
            ["Event 'Bad start' (UID 'badstart@x') in bad.ics has an invalid DTSTART", "2026-03-16 09:00",
             "DTSTART:20260316T090000"],
        ),
        (
            "UID:sometimes@x\nSUMMARY:Sometimes\nDTSTART:20260316T090000Z\nDTEND:20260316T100000Z\n"
            "RRULE:FREQ=SOMETIMES;COUNT=3",
            ["Event 'Sometimes' (UID 'sometimes@x') in bad.ics has an invalid RRULE", "SOMETIMES",
             "RRULE:FREQ=WEEKLY;COUNT=12"],
        ),
        (
            "UID:mars@x\nSUMMARY:Mars\nDTSTART;TZID=Mars/Olympus:20260316T090000\n"
            "DTEND;TZID=Mars/Olympus:20260316T100000",
            ["Event 'Mars' (UID 'mars@x') in bad.ics has an unknown time zone TZID='Mars/Olympus' in DTSTART",
             "IANA name"],
        ),
        (
            "UID:exdate@x\nSUMMARY:Exdate\nDTSTART;TZID=Europe/Berlin:20260316T090000\n"
            "DTEND;TZID=Europe/Berlin:20260316T100000\nRRULE:FREQ=WEEKLY;COUNT=3\n"
            "EXDATE;TZID=Mars/Olympus:20260323T090000",
            ["unknown time zone TZID='Mars/Olympus' in EXDATE"],
        ),
        (
            "UID:allday@x\nSUMMARY:Holiday\nDTSTART;VALUE=DATE:20260316\nDTEND;VALUE=DATE:20260317",
            ["Event 'Holiday' (UID 'allday@x') in bad.ics is an all-day event on 2026-03-16"],
        ),
        (
            "UID:noend@x\nSUMMARY:No end\nDTSTART:20260316T090000Z",
            ["Event 'No end' (UID 'noend@x') in bad.ics has neither DTEND nor DURATION"],
        ),
        (
            "UID:backwards@x\nSUMMARY:Backwards\nDTSTART:20260316T100000Z\nDTEND:20260316T090000Z",
            ["Event 'Backwards' (UID 'backwards@x') in bad.ics has DTEND 2026-03-16T09:00:00+00:00, not after its "
             "DTSTART 2026-03-16T10:00:00+00:00"],
        ),
        (
            "UID:y1@x\nSUMMARY:Year one\nDTSTART:00010101T000000\nDTEND:00010101T010000",
            ["Event 'Year one' (UID 'y1@x') in bad.ics has DTSTART 0001-01-01T00:00:00, out of range",
             "from 1900 to 9000"],
        ),
        (
            "UID:y9999@x\nSUMMARY:Last day\nDTSTART:20260316T090000Z\nDTEND:99991231T235959Z",
            ["has DTEND 9999-12-31T23:59:59+00:00, out of range"],
        ),
        (
            "UID:zero@x\nSUMMARY:Zero\nDTSTART:20260316T100000Z\nDURATION:PT0S",
            ["Event 'Zero' (UID 'zero@x') in bad.ics has a DURATION that is not positive"],
        ),
        (
            f"UID:long@x\nSUMMARY:{'y' * 5000}\nDTSTART:20260316T090000Z\nDTEND:20260316T100000Z",
            ["invalid title", "(5000 characters)"],
        ),
    ],
)
def test_ics_invalid_event(tmp_path: Path, db_url: str, capsys, body: str, parts: list[str]) -> None:
    path = tmp_path / "bad.ics"
    path.write_text(calendar("UID:fine@x\nSUMMARY:Fine\nDTSTART:20260316T120000Z\nDTEND:20260316T130000Z", body))

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 2
    assert_one_error(err, *parts)
    assert len(err) < 400
    with Store.open(db_url) as store:
        assert store.list_lectures() == []


def test_ics_windows_and_vtimezone_zones(tmp_path: Path, db_url: str, capsys) -> None:
    # A Windows zone name and a zone defined in the file are known, so neither is rejected.
    vtimezone = (
        "BEGIN:VTIMEZONE\nTZID:School Time\nBEGIN:STANDARD\nDTSTART:19701025T030000\nTZOFFSETFROM:+0200\n"
        "TZOFFSETTO:+0100\nRRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU\nEND:STANDARD\nBEGIN:DAYLIGHT\n"
        "DTSTART:19700329T020000\nTZOFFSETFROM:+0100\nTZOFFSETTO:+0200\nRRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU\n"
        "END:DAYLIGHT\nEND:VTIMEZONE\n"
    )
    text = calendar(
        "UID:win@x\nSUMMARY:Windows\nDTSTART;TZID=W. Europe Standard Time:20260316T090000\n"
        "DTEND;TZID=W. Europe Standard Time:20260316T100000",
        "UID:own@x\nSUMMARY:Own zone\nDTSTART;TZID=School Time:20260317T090000\n"
        "DTEND;TZID=School Time:20260317T100000",
    ).replace("PRODID:-//classroom-emotion-stats tests//EN\n", f"PRODID:-//classroom-emotion-stats tests//EN\n{vtimezone}")
    path = tmp_path / "zones.ics"
    path.write_text(text)

    exit_code, err = import_file(capsys, db_url, path, "--tz", "UTC")

    assert exit_code == 0, err
    with Store.open(db_url) as store:
        starts = [lecture.start for lecture in store.list_lectures()]
    # 09:00 at UTC+01:00 in both zones, although --tz is UTC.
    assert starts == [datetime(2026, 3, 16, 8, 0, tzinfo=UTC), datetime(2026, 3, 17, 8, 0, tzinfo=UTC)]


def test_ics_minutely_rule_rejected(tmp_path: Path, db_url: str, capsys) -> None:
    path = tmp_path / "minutely.ics"
    path.write_text(calendar(
        "UID:minutely@x\nSUMMARY:Every minute\nDTSTART:20260316T090000Z\nDTEND:20260316T090100Z\nRRULE:FREQ=MINUTELY"
    ))  # fmt: skip

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 2
    assert_one_error(
        err, "Event 'Every minute' (UID 'minutely@x') in minutely.ics", "more than 5000 occurrences",
        "RRULE 'FREQ=MINUTELY'", "--from and --to",
    )  # fmt: skip


def test_ics_occurrence_limit_boundary(tmp_path: Path, db_url: str, capsys, monkeypatch) -> None:
    monkeypatch.setattr(timetable, "MAX_OCCURRENCES_PER_EVENT", 10)
    event = "UID:daily@x\nSUMMARY:Daily\nDTSTART:20260316T090000Z\nDTEND:20260316T100000Z\nRRULE:FREQ=DAILY;COUNT={}"
    path = tmp_path / "daily.ics"

    path.write_text(calendar(event.format(11)))
    over_code, over_err = import_file(capsys, db_url, path)
    path.write_text(calendar(event.format(10)))
    at_code, at_err = import_file(capsys, db_url, path)

    assert over_code == 2
    assert_one_error(over_err, "more than 10 occurrences")
    assert at_code == 0
    assert "10 lectures added" in at_err


def test_ics_occurrence_limit_counts_range(tmp_path: Path, db_url: str, capsys, monkeypatch) -> None:
    # 30 daily occurrences, but only 5 of them start from --from to --to.
    monkeypatch.setattr(timetable, "MAX_OCCURRENCES_PER_EVENT", 10)
    path = tmp_path / "daily.ics"
    path.write_text(calendar(
        "UID:daily@x\nSUMMARY:Daily\nDTSTART:20260316T090000Z\nDTEND:20260316T100000Z\nRRULE:FREQ=DAILY;COUNT=30"
    ))  # fmt: skip

    exit_code, err = import_file(capsys, db_url, path, "--from", "2026-03-20", "--to", "2026-03-25")

    assert exit_code == 0, err
    assert "5 lectures added" in err


def test_ics_long_rule_before_range(tmp_path: Path, db_url: str, capsys) -> None:
    # One hour of minutes is in range, but the rule repeats a year of minutes before it.
    path = tmp_path / "minutely.ics"
    path.write_text(calendar(
        "UID:minutely@x\nSUMMARY:Every minute\nDTSTART:20250316T090000Z\nDTEND:20250316T090100Z\nRRULE:FREQ=MINUTELY"
    ))  # fmt: skip

    exit_code, err = import_file(capsys, db_url, path, "--from", "2026-03-16T09:00", "--to", "2026-03-16T10:00")

    assert exit_code == 2
    assert_one_error(err, "repeats more than 200000 times from its DTSTART 2025-03-16T09:00:00+00:00", "COUNT or UNTIL")


@pytest.mark.parametrize(
    ("args", "parts", "absent"),
    [
        (("--from", "2026-04-01", "--to", "2026-03-01"), ("--to '2026-03-01' is not after --from '2026-04-01'",), None),
        (
            ("--to", "2026-03-01"),
            ("The import range of b101.ics ends at 2026-02-28T23:00:00+00:00", "give a later --to"),
            None,
        ),
        (("--from", "2026-03-01", "--to", "yesterday"), ("Invalid --to 'yesterday'",), "T00:00"),
    ],
    ids=["reversed", "to-before-first-event", "typed-value-echoed"],
)
def test_ics_bad_range(tmp_path: Path, db_url: str, capsys, args, parts, absent) -> None:
    path = tmp_path / "b101.ics"
    path.write_text(ICS)

    exit_code, err = import_file(capsys, db_url, path, *args)

    assert exit_code == 2
    assert_one_error(err, *parts)
    if absent is not None:
        assert absent not in err


def test_ics_range_limits_import(tmp_path: Path, db_url: str, capsys) -> None:
    path = tmp_path / "b101.ics"
    path.write_text(ICS)

    exit_code, err = import_file(capsys, db_url, path, "--from", "2026-03-30", "--to", "2026-04-30")

    assert exit_code == 0
    assert "2 lectures added" in err


def test_csv_range_rejected(tmp_path: Path, db_url: str, capsys) -> None:
    path = tmp_path / "timetable.csv"
    path.write_text("title,start,end\nPhysics,2026-10-24T10:00,2026-10-24T11:30\n")

    exit_code, err = import_file(capsys, db_url, path, "--from", "2026-10-01")

    assert exit_code == 2
    assert_one_error(err, "--from and --to apply to .ics files only")


MOVING_EVENT = "UID:exam@school.example\nSUMMARY:Exam\nDTSTART;TZID=Europe/Berlin:{}\nDURATION:PT2H"


def test_ics_moved_event_updates(tmp_path: Path, db_url: str, capsys) -> None:
    path = tmp_path / "exams.ics"
    path.write_text(calendar(MOVING_EVENT.format("20260320T090000")))
    assert import_file(capsys, db_url, path)[0] == 0

    path.write_text(calendar(MOVING_EVENT.format("20260320T100000")))
    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 0
    assert "0 lectures added, 1 updated" in err
    with Store.open(db_url) as store:
        [lecture] = store.list_lectures()
    assert lecture.start == datetime(2026, 3, 20, 9, 0, tzinfo=UTC)


def test_ics_unchanged_import_idempotent(tmp_path: Path, db_url: str, capsys) -> None:
    path = tmp_path / "b101.ics"
    path.write_text(ICS)
    assert import_file(capsys, db_url, path)[0] == 0
    with Store.open(db_url) as store:
        before = store.list_lectures()

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 0
    assert "0 lectures added, 4 updated" in err
    with Store.open(db_url) as store:
        assert store.list_lectures() == before


SERIES = """UID:series@school.example
SUMMARY:Chemistry
DTSTART;TZID=Europe/Berlin:20260316T090000
DTEND;TZID=Europe/Berlin:20260316T100000
RRULE:FREQ=WEEKLY;COUNT=3"""

MOVED_OCCURRENCE = """UID:series@school.example
SUMMARY:Chemistry (moved)
RECURRENCE-ID;TZID=Europe/Berlin:20260323T090000
DTSTART;TZID=Europe/Berlin:20260323T110000
DTEND;TZID=Europe/Berlin:20260323T120000"""


def test_ics_moved_occurrence_updates(tmp_path: Path, db_url: str, capsys) -> None:
    path = tmp_path / "chemistry.ics"
    path.write_text(calendar(SERIES))
    assert import_file(capsys, db_url, path)[0] == 0
    with Store.open(db_url) as store:
        ids = [lecture.id for lecture in store.list_lectures()]

    path.write_text(calendar(SERIES, MOVED_OCCURRENCE))
    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 0
    assert "0 lectures added, 3 updated" in err
    with Store.open(db_url) as store:
        lectures = store.list_lectures()
    assert [lecture.id for lecture in lectures] == ids
    assert lectures[1].title == "Chemistry (moved)"
    assert lectures[1].start == datetime(2026, 3, 23, 10, 0, tzinfo=UTC)


def earlier_entry(uid: str, start: datetime, title: str) -> TimetableEntry:
    return TimetableEntry(room="B-101", title=title, start=start, end=start + timedelta(hours=2), course=title, uid=uid)


def test_ics_earlier_keys_adopted(tmp_path: Path, db_url: str, capsys) -> None:
    # Lectures as versions with keys of UID and start stored them, imported from the same file.
    exam_start = datetime(2026, 3, 20, 8, 0, tzinfo=UTC)
    moved_start = datetime(2026, 3, 23, 10, 0, tzinfo=UTC)
    with Store.open(db_url) as store:
        store.import_timetable([
            earlier_entry(f"exam@school.example|{exam_start.isoformat()}", exam_start, "Exam"),
            earlier_entry(f"series@school.example|{datetime(2026, 3, 16, 8, 0, tzinfo=UTC).isoformat()}",
                          datetime(2026, 3, 16, 8, 0, tzinfo=UTC), "Chemistry"),
            earlier_entry(f"series@school.example|{moved_start.isoformat()}", moved_start, "Chemistry (moved)"),
            earlier_entry(f"series@school.example|{datetime(2026, 3, 30, 7, 0, tzinfo=UTC).isoformat()}",
                          datetime(2026, 3, 30, 7, 0, tzinfo=UTC), "Chemistry"),
        ], LectureSource.ICS)  # fmt: skip
        ids = sorted(lecture.id for lecture in store.list_lectures())
    path = tmp_path / "b101.ics"
    path.write_text(calendar(MOVING_EVENT.format("20260320T090000"), SERIES, MOVED_OCCURRENCE))

    first_code, first_err = import_file(capsys, db_url, path)
    second_code, second_err = import_file(capsys, db_url, path)

    assert first_code == 0
    assert "0 lectures added, 4 updated" in first_err
    assert second_code == 0
    assert "0 lectures added, 4 updated" in second_err
    with Store.open(db_url) as store:
        assert sorted(lecture.id for lecture in store.list_lectures()) == ids


def test_ics_earlier_key_of_moved_event(tmp_path: Path, db_url: str, capsys) -> None:
    # The event moved before the first import with UID keys: its old start is not in the file.
    old_start = datetime(2026, 3, 20, 8, 0, tzinfo=UTC)
    with Store.open(db_url) as store:
        store.import_timetable(
            [earlier_entry(f"exam@school.example|{old_start.isoformat()}", old_start, "Exam")], LectureSource.ICS
        )
    path = tmp_path / "exams.ics"
    path.write_text(calendar(MOVING_EVENT.format("20260320T100000")))

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 0
    assert "0 lectures added, 1 updated" in err
    with Store.open(db_url) as store:
        [lecture] = store.list_lectures()
    assert lecture.start == datetime(2026, 3, 20, 9, 0, tzinfo=UTC)


def test_csv_duplicate_uid(tmp_path: Path, db_url: str, capsys) -> None:
    path = tmp_path / "timetable.csv"
    path.write_text(
        "title,start,end,uid\n"
        "Physics,2026-10-24T10:00,2026-10-24T11:30,phy-1\n"
        "\n"
        "Chemistry,2026-10-25T10:00,2026-10-25T11:30,chem-1\n"
        "Physics 2,2026-10-26T10:00,2026-10-26T11:30,phy-1\n"
    )

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 2
    # The blank line 3 counts, as in an editor.
    assert_one_error(err, "timetable.csv lines 2 and 5 have the same uid 'phy-1' in room 'B-101'", "its own uid")
    with Store.open(db_url) as store:
        assert store.list_lectures() == []


def test_csv_duplicate_row(tmp_path: Path, db_url: str, capsys) -> None:
    row = "Physics,2026-10-24T10:00,2026-10-24T11:30\n"
    path = tmp_path / "timetable.csv"
    path.write_text("title,start,end\n" + row + "Chemistry,2026-10-25T10:00,2026-10-25T11:30\n" + row)

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 2
    assert_one_error(err, "timetable.csv lines 2 and 4 are the same lecture", "delete one of them")


def test_csv_same_uid_other_rooms(tmp_path: Path, db_url: str, capsys) -> None:
    path = tmp_path / "timetable.csv"
    path.write_text(
        "title,start,end,room,uid\n"
        "Physics,2026-10-24T10:00,2026-10-24T11:30,B-101,week-1\n"
        "Physics,2026-10-24T10:00,2026-10-24T11:30,C-2,week-1\n"
    )

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 0
    assert "2 lectures added, 0 updated" in err


@pytest.mark.parametrize(
    ("row", "parts"),
    [
        (",2026-10-24T10:00,2026-10-24T11:30", ["timetable.csv line 3: invalid title ''"]),
        ("Physics,2026-10-24T11:30,2026-10-24T10:00",
         ["timetable.csv line 3: end '2026-10-24T10:00' is not after start '2026-10-24T11:30'"]),
        ("Physics,2026-10-24T10:00,2026-10-24T10:00", ["timetable.csv line 3: end", "is not after start"]),
        ("Physics,soon,2026-10-24T10:00", ["Invalid timetable.csv line 3 start 'soon'"]),
        (f"{'x' * 5000},2026-10-24T10:00,2026-10-24T11:30",
         ["timetable.csv line 3: invalid title 'xxxxx", "... (5000 characters)", "1 to 200"]),
        ("Physics,2026-10-24T10:00,2026-10-24T11:30,extra", ["timetable.csv line 3 has more cells"]),
    ],
)  # fmt: skip
def test_csv_row_errors_name_line(tmp_path: Path, db_url: str, capsys, row: str, parts: list[str]) -> None:
    path = tmp_path / "timetable.csv"
    path.write_text(f"title,start,end\nChemistry,2026-10-23T10:00,2026-10-23T11:30\n{row}\n")

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 2
    assert_one_error(err, *parts)
    assert len(err) < 300


def test_csv_unknown_column(tmp_path: Path, db_url: str, capsys) -> None:
    path = tmp_path / "timetable.csv"
    path.write_text("title,start,end,rooom\nPhysics,2026-10-24T10:00,2026-10-24T11:30,C-2\n")

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 2
    assert_one_error(err, "unknown columns 'rooom'", "course,room,uid")


def test_ics_same_key_twice(tmp_path: Path, db_url: str, capsys) -> None:
    # Without a UID the key is title and start, so these two events are indistinguishable.
    event = "SUMMARY:Physics\nDTSTART:20260316T090000Z\nDTEND:20260316T100000Z\nLOCATION:{}"
    path = tmp_path / "no-uid.ics"
    path.write_text(calendar(event.format("B-101"), event.format("B-101"), event.format("C-2")))

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 2
    assert_one_error(err, "no-uid.ics has two events in room 'B-101' with the same key 'Physics|2026-03-16T09:00", "own UID")


def test_ics_unreadable_file(tmp_path: Path, db_url: str, capsys) -> None:
    path = tmp_path / "binary.ics"
    path.write_bytes(bytes(range(256)) * 8)

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 2
    assert_one_error(err, f"Cannot read the iCalendar file {str(path)!r}")
    assert len(err) < 400


def test_csv_semicolon_separator(tmp_path: Path, db_url: str, capsys) -> None:
    # As spreadsheet programs write CSV in locales with a decimal comma.
    path = tmp_path / "timetable.csv"
    path.write_text(
        "title;start;end;course\n"
        "Physik;2026-10-24T10:00;2026-10-24T11:30;PHY-1\n"
        '"Chemie; Labor";2026-10-25T10:00;2026-10-25T11:30;CHE-1\n'
    )

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 0, err
    assert "2 lectures added, 0 updated" in err
    with Store.open(db_url) as store:
        lectures = store.list_lectures()
    assert [(lecture.title, lecture.course) for lecture in lectures] == [
        ("Physik", "PHY-1"),
        ("Chemie; Labor", "CHE-1"),
    ]
    assert lectures[0].start == datetime(2026, 10, 24, 8, 0, tzinfo=UTC)


def test_csv_semicolon_extra_cell(tmp_path: Path, db_url: str, capsys) -> None:
    path = tmp_path / "timetable.csv"
    path.write_text("title;start;end\nPhysik; Teil 2;2026-10-24T10:00;2026-10-24T11:30\n")

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 2
    assert_one_error(err, "timetable.csv line 2 has more cells", "quote cells that contain semicolons")


@pytest.mark.parametrize(
    ("header", "shown"),
    [("title\tstart\tend", "'title\\tstart\\tend'"), ("Titel;Beginn;Ende", "'Titel', 'Beginn', 'Ende'")],
    ids=["tab", "german"],
)
def test_csv_unreadable_header(tmp_path: Path, db_url: str, capsys, header: str, shown: str) -> None:
    path = tmp_path / "timetable.csv"
    path.write_text(f"{header}\n")

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 2
    assert_one_error(
        err, f"unknown columns {shown}", "must contain title,start,end and may add course,room,uid",
        "separated by ',' or ';'",
    )  # fmt: skip


@pytest.mark.parametrize("content", ["", "\n", " \r\n"], ids=["zero-bytes", "newline", "blank"])
def test_csv_empty_file(tmp_path: Path, db_url: str, capsys, content: str) -> None:
    path = tmp_path / "timetable.csv"
    path.write_text(content)

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 2
    assert_one_error(err, f"The timetable {str(path)!r} is empty", "title,start,end")


def test_csv_header_only(tmp_path: Path, db_url: str, capsys) -> None:
    path = tmp_path / "timetable.csv"
    path.write_text("title,start,end,course\n")

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 0
    assert err == "No lectures in timetable.csv: it has only a header, nothing imported\n"
    assert not Path(db_url.removeprefix("sqlite:///")).exists()


def test_csv_header_only_missing_column(tmp_path: Path, db_url: str, capsys) -> None:
    path = tmp_path / "timetable.csv"
    path.write_text("title,start\n")

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 2
    assert_one_error(err, "has no column end")


def test_import_one_lecture_singular(tmp_path: Path, db_url: str, capsys) -> None:
    path = tmp_path / "timetable.csv"
    path.write_text("title,start,end\nPhysics,2026-10-24T10:00,2026-10-24T11:30\n")

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 0
    assert err == (
        "Imported timetable.csv: 1 lecture added, 0 updated; times without a UTC offset were read in "
        "Europe/Berlin (from --tz)\n"
    )


def test_ics_no_lectures_in_range(tmp_path: Path, db_url: str, capsys) -> None:
    path = tmp_path / "b101.ics"
    path.write_text(ICS)

    exit_code, err = import_file(capsys, db_url, path, "--from", "2027-01-01", "--to", "2027-02-01")

    assert exit_code == 0
    assert err == "No lectures in b101.ics from 2027-01-01 to 2027-02-01: nothing imported\n"


# A weekly series on Mondays 16 March to 13 April 2026 at 09:00, in floating time, which
# the import reads in --tz. The import range is 23 March up to 6 April, Europe/Berlin.
FLOATING_SERIES = """UID:floating@school.example
SUMMARY:Biology
DTSTART:20260316T090000
DTEND:20260316T100000
RRULE:FREQ=WEEKLY;COUNT=5"""


def moved_biology(original: str, start: str, minutes: int = 60) -> str:
    end = (datetime.fromisoformat(start) + timedelta(minutes=minutes)).strftime("%Y%m%dT%H%M%S")
    return (
        f"UID:floating@school.example\nSUMMARY:Biology (moved)\nRECURRENCE-ID:{original}\n"
        f"DTSTART:{datetime.fromisoformat(start):%Y%m%dT%H%M%S}\nDTEND:{end}"
    )


@pytest.mark.parametrize(
    ("moved", "expected"),
    [
        # From before the range to its last evening: 23:30 on 5 April is 21:30 UTC.
        (
            moved_biology("20260316T090000", "2026-04-05T23:30"),
            [("Biology", "2026-03-23T08:00"), ("Biology", "2026-03-30T07:00"),
             ("Biology (moved)", "2026-04-05T21:30")],
        ),
        # From after the range into it.
        (
            moved_biology("20260413T090000", "2026-03-25T10:00"),
            [("Biology", "2026-03-23T08:00"), ("Biology (moved)", "2026-03-25T09:00"),
             ("Biology", "2026-03-30T07:00")],
        ),
        # From the range to the evening before it: 23:30 on 22 March is 22:30 UTC, outside.
        (moved_biology("20260330T090000", "2026-03-22T23:30"), [("Biology", "2026-03-23T08:00")]),
        # From the range to after it.
        (moved_biology("20260323T090000", "2026-04-07T09:00"), [("Biology", "2026-03-30T07:00")]),
        # To a start before the range and an end inside it: it starts outside.
        (moved_biology("20260330T090000", "2026-03-22T23:30", minutes=90), [("Biology", "2026-03-23T08:00")]),
    ],
    ids=["before-to-inside", "after-to-inside", "inside-to-before", "inside-to-after", "straddles-from"],
)  # fmt: skip
def test_ics_moved_occurrence_range(tmp_path: Path, db_url: str, capsys, moved: str, expected) -> None:
    path = tmp_path / "biology.ics"
    path.write_text(calendar(FLOATING_SERIES, moved))

    exit_code, err = import_file(capsys, db_url, path, "--from", "2026-03-23", "--to", "2026-04-06")

    assert exit_code == 0, err
    with Store.open(db_url) as store:
        lectures = store.list_lectures()
    assert [(lecture.title, lecture.start) for lecture in lectures] == [
        (title, datetime.fromisoformat(start).replace(tzinfo=UTC)) for title, start in expected
    ]


def test_ics_event_straddling_range_start(tmp_path: Path, db_url: str, capsys) -> None:
    # Starts at 23:00 on 22 March in Berlin and ends after the range's first midnight.
    path = tmp_path / "night.ics"
    path.write_text(calendar(
        "UID:night@x\nSUMMARY:Night lab\nDTSTART;TZID=Europe/Berlin:20260322T230000\n"
        "DTEND;TZID=Europe/Berlin:20260323T010000"
    ))  # fmt: skip

    exit_code, err = import_file(capsys, db_url, path, "--from", "2026-03-23", "--to", "2026-04-06")

    assert exit_code == 0
    assert "No lectures in night.ics from 2026-03-23 to 2026-04-06" in err


def test_lecture_start_twice_rejected(db_url: str, capsys) -> None:
    start = ["lecture", "start", "--room", "B-101", "--db", db_url, "--tz", "UTC"]
    assert main([*start, "--title", "First"]) == 0
    first_id = int(capsys.readouterr().out)

    exit_code = main([*start, "--title", "Second"])

    assert exit_code == 2
    assert_one_error(capsys.readouterr().err, f"Lecture {first_id} 'First' already runs in room 'B-101'",
                     "'aggregator lecture stop --room B-101'")  # fmt: skip
    with Store.open(db_url) as store:
        assert [lecture.title for lecture in store.list_lectures()] == ["First"]


# How long the first caller waits, after its check, for the second to reach the same point.
# Serialized callers never meet there, so each test waits this long once.
CHECK_MEETING_TIMEOUT_S = 2.0


def start_in_two_threads(urls: list[str], room: str) -> list[Lecture | LectureRunningError]:
    """Call start_ad_hoc_lecture from two threads, each with its own store, at the same moment.

    Each thread pauses after its first query of the lectures table until the other thread
    has run its own, so two callers that do not serialize both see no running lecture.
    """
    meeting = threading.Barrier(len(urls), timeout=CHECK_MEETING_TIMEOUT_S)
    paused: set[int] = set()

    def pause_after_check(_connection, _cursor, statement: str, *_args) -> None:
        if "FROM lectures" not in statement or threading.get_ident() in paused:
            return
        paused.add(threading.get_ident())
        try:
            meeting.wait()
        except threading.BrokenBarrierError:
            pass  # The other thread waits for this one's transaction.

    stores = [Store.open(url) for url in urls]
    for store in stores:
        event.listen(store.engine, "after_cursor_execute", pause_after_check)
    now = datetime.now(UTC)
    planned_end = now + timedelta(hours=1)
    results: list[Lecture | LectureRunningError | None] = [None] * len(urls)

    def start(index: int) -> None:
        try:
            results[index] = stores[index].start_ad_hoc_lecture(room, f"Lecture {index}", now, planned_end)
        except LectureRunningError as error:
            results[index] = error

    threads = [threading.Thread(target=start, args=(index,)) for index in range(len(urls))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for store in stores:
            store.close()
    return results  # type: ignore[return-value]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_concurrent_starts_one_lecture(request, db_url: str, database: str) -> None:
    url = db_url if database == "sqlite" else request.getfixturevalue("postgres_url")
    room = f"concurrent-{database}"
    Store.open(url).close()

    results = start_in_two_threads([url, url], room)

    started = [result for result in results if isinstance(result, Lecture)]
    rejected = [result for result in results if isinstance(result, LectureRunningError)]
    assert len(started) == 1, results
    assert len(rejected) == 1, results
    assert rejected[0].running == started[0]
    with Store.open(url) as store:
        assert [lecture.id for lecture in store.list_lectures(room=room)] == [started[0].id]


def test_start_ad_hoc_after_stop(db_url: str) -> None:
    # A lecture stopped within the current second no longer runs, although the new one
    # starts at the second's beginning.
    now = datetime(2026, 3, 2, 8, 0, 0, 500_000, tzinfo=UTC)
    planned_end = now + timedelta(hours=1)
    with Store.open(db_url) as store:
        first = store.start_ad_hoc_lecture("B-101", "First", now - timedelta(minutes=5), planned_end)
        store.stop_lecture("B-101", now)
        second = store.start_ad_hoc_lecture("B-101", "Second", now + timedelta(microseconds=1), planned_end)

    assert second.id != first.id
    assert second.start == datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def test_stop_after_planned_end(db_url: str) -> None:
    # Started with a planned length of 1 min and stopped 65 s later: the overrun counts.
    started = datetime(2026, 3, 2, 8, 0, 0, 250_000, tzinfo=UTC)
    stopped = started + timedelta(seconds=65)
    with Store.open(db_url) as store:
        lecture = store.start_ad_hoc_lecture("B1", "T", started, started + timedelta(minutes=1))
        ended = store.stop_lecture("B1", stopped)

    assert ended.id == lecture.id
    assert ended.end == stopped
    assert ended.duration_s == 65.25


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_stop_twice_keeps_first_end(request, db_url: str, database: str) -> None:
    url = db_url if database == "sqlite" else request.getfixturevalue("postgres_url")
    room = f"stop-twice-{database}"
    started = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    first_stop = started + timedelta(minutes=30, microseconds=5)
    with Store.open(url) as store:
        lecture = store.start_ad_hoc_lecture(room, "T", started, started + timedelta(minutes=90))
        store.stop_lecture(room, first_stop)
        with pytest.raises(LectureNotFoundError) as raised:
            store.stop_lecture(room, first_stop + timedelta(hours=1))
        after = store.get_lecture(lecture.id)

    assert f"lecture {lecture.id}, was stopped at" in str(raised.value)
    assert after.end == first_stop


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_stop_records_stop_time(request, db_url: str, database: str) -> None:
    # A stopped lecture is never reopened by a later stop, even one at a whole second.
    url = db_url if database == "sqlite" else request.getfixturevalue("postgres_url")
    room = f"stop-records-{database}"
    started = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    whole_second = started + timedelta(minutes=5)
    with Store.open(url) as store:
        store.start_ad_hoc_lecture(room, "T", started, started + timedelta(minutes=1))
        ended = store.stop_lecture(room, whole_second)
        with pytest.raises(LectureNotFoundError):
            store.stop_lecture(room, whole_second + timedelta(minutes=10))

    assert ended.end == whole_second


def test_stop_skips_older_overrun_lecture(db_url: str) -> None:
    # The older lecture overran without a stop; the newer one was stopped. Neither is reopened.
    older_start = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    newer_start = older_start + timedelta(hours=2)
    with Store.open(db_url) as store:
        older = store.start_ad_hoc_lecture("B1", "Older", older_start, older_start + timedelta(hours=1))
        store.start_ad_hoc_lecture("B1", "Newer", newer_start, newer_start + timedelta(hours=1))
        store.stop_lecture("B1", newer_start + timedelta(minutes=20, microseconds=1))
        with pytest.raises(LectureNotFoundError):
            store.stop_lecture("B1", newer_start + timedelta(minutes=40))
        assert store.get_lecture(older.id).end == older_start + timedelta(hours=1)


def test_stop_limits_lookback(db_url: str) -> None:
    started = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    with Store.open(db_url) as store:
        lecture = store.start_ad_hoc_lecture("B1", "Forgotten", started, started + timedelta(hours=1))
        with pytest.raises(LectureNotFoundError) as raised:
            store.stop_lecture("B1", started + MAX_AD_HOC_LENGTH + timedelta(seconds=1))
        ended = store.stop_lecture("B1", started + MAX_AD_HOC_LENGTH)

    assert "more than 24 h ago" in str(raised.value)
    assert ended.id == lecture.id
    assert ended.end == started + MAX_AD_HOC_LENGTH


def test_stop_ignores_other_rooms_and_sources(db_url: str) -> None:
    started = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    with Store.open(db_url) as store:
        store.start_ad_hoc_lecture("C2", "Other room", started, started + timedelta(hours=1))
        store.add_lecture("B1", "Timetabled", started, started + timedelta(hours=1))
        with pytest.raises(LectureNotFoundError):
            store.stop_lecture("B1", started + timedelta(minutes=10))


def test_cli_stop_after_planned_end(db_url: str, capsys) -> None:
    started = datetime.now(UTC) - timedelta(minutes=2)
    with Store.open(db_url) as store:
        lecture = store.start_ad_hoc_lecture("B1", "T", started, started + timedelta(minutes=1))

    exit_code = main(["lecture", "stop", "--room", "B1", "--db", db_url, "--tz", "UTC"])

    assert exit_code == 0
    assert capsys.readouterr().out == f"{lecture.id}\n"
    with Store.open(db_url) as store:
        ended = store.get_lecture(lecture.id)
    assert ended.duration_s > 115


def dst_series(first_day: str, length: str) -> str:
    return (
        f"UID:night@school.example\nSUMMARY:Night\nDTSTART;TZID=Europe/Berlin:{first_day}T023000\n"
        f"{length}\nRRULE:FREQ=DAILY;COUNT=4"
    )


@pytest.mark.parametrize(
    ("first_day", "starts"),
    [
        # Summer time ends on 25 October 2026: 02:30 occurs twice, and RFC 5545 takes the first (UTC+02:00).
        ("20261023", [(10, 23, 0), (10, 24, 0), (10, 25, 0), (10, 26, 1)]),
        # Summer time begins on 29 March 2026: 02:30 does not exist, so it is read with the offset
        # before the gap.
        ("20260327", [(3, 27, 1), (3, 28, 1), (3, 29, 1), (3, 30, 0)]),
    ],
)
@pytest.mark.parametrize("length", ["DTEND;TZID=Europe/Berlin:{}T033000", "DURATION:PT1H"])
def test_ics_recurrence_exact_length(
    tmp_path: Path, db_url: str, capsys, first_day: str, starts: list[tuple[int, int, int]], length: str
) -> None:
    path = tmp_path / "night.ics"
    path.write_text(calendar(dst_series(first_day, length.format(first_day))))

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 0, err
    with Store.open(db_url) as store:
        lectures = store.list_lectures()
    assert [lecture.start for lecture in lectures] == [
        datetime(2026, month, day, hour, 30, tzinfo=UTC) for month, day, hour in starts
    ]
    assert [lecture.duration_s for lecture in lectures] == [3600] * 4


def test_ics_first_instance_length_applies(tmp_path: Path, db_url: str, capsys) -> None:
    # The first instance spans the change to winter time: 02:00 to 04:00 is 3 h, and so is every occurrence.
    path = tmp_path / "night.ics"
    path.write_text(calendar(
        "UID:long@school.example\nSUMMARY:Long\nDTSTART;TZID=Europe/Berlin:20261025T020000\n"
        "DTEND;TZID=Europe/Berlin:20261025T040000\nRRULE:FREQ=DAILY;COUNT=2"
    ))  # fmt: skip

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 0, err
    with Store.open(db_url) as store:
        assert [lecture.duration_s for lecture in store.list_lectures()] == [3 * 3600] * 2


def test_ics_moved_and_period_own_length(tmp_path: Path, db_url: str, capsys) -> None:
    series = dst_series("20261023", "DTEND;TZID=Europe/Berlin:20261023T033000")
    series += "\nRDATE;VALUE=PERIOD;TZID=Europe/Berlin:20261027T100000/20261027T130000"
    moved = (
        "UID:night@school.example\nSUMMARY:Night (moved)\nRECURRENCE-ID;TZID=Europe/Berlin:20261025T023000\n"
        "DTSTART;TZID=Europe/Berlin:20261025T020000\nDTEND;TZID=Europe/Berlin:20261025T040000"
    )
    path = tmp_path / "night.ics"
    path.write_text(calendar(series, moved))

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 0, err
    with Store.open(db_url) as store:
        lengths = {lecture.start: lecture.duration_s for lecture in store.list_lectures()}
    # The moved occurrence spans the change: 02:00 summer time to 04:00 winter time is 3 h.
    assert lengths[datetime(2026, 10, 25, 0, 0, tzinfo=UTC)] == 3 * 3600
    assert lengths[datetime(2026, 10, 27, 9, 0, tzinfo=UTC)] == 3 * 3600
    assert lengths[datetime(2026, 10, 26, 1, 30, tzinfo=UTC)] == 3600


ROOM_CSV = "title,start,end,room,uid\nPhysics,2026-10-24T10:00,2026-10-24T11:30,{},phy-1\n"
OTHER_ROOM_ROW = "Chemistry,2026-10-25T10:00,2026-10-25T11:30,B-101,chem-1\n"


def test_csv_room_change_moves_lecture(tmp_path: Path, db_url: str, capsys) -> None:
    path = tmp_path / "timetable.csv"
    path.write_text(ROOM_CSV.format("B-101") + OTHER_ROOM_ROW)
    assert import_file(capsys, db_url, path)[0] == 0
    with Store.open(db_url) as store:
        [physics_id] = [lecture.id for lecture in store.list_lectures() if lecture.title == "Physics"]

    path.write_text(ROOM_CSV.format("C-2") + OTHER_ROOM_ROW)
    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 0
    assert "0 lectures added, 2 updated" in err
    with Store.open(db_url) as store:
        physics = [lecture for lecture in store.list_lectures() if lecture.title == "Physics"]
    assert [(lecture.id, lecture.room) for lecture in physics] == [(physics_id, "C-2")]


def test_csv_uid_of_another_room_file(tmp_path: Path, db_url: str, capsys) -> None:
    # Each room's file numbers its lectures from 1: the uid identifies a lecture only within its room.
    for room in ("B-101", "C-2"):
        path = tmp_path / f"{room}.csv"
        path.write_text("title,start,end,uid\nPhysics,2026-10-24T10:00,2026-10-24T11:30,1\n")
        exit_code = main(["lecture", "import", str(path), "--room", room, "--tz", "UTC", "--db", db_url])
        assert exit_code == 0
        assert "1 lecture added, 0 updated" in capsys.readouterr().err

    with Store.open(db_url) as store:
        assert sorted(lecture.room for lecture in store.list_lectures()) == ["B-101", "C-2"]


def test_csv_room_change_shared_uid(tmp_path: Path, db_url: str, capsys) -> None:
    # Rooms B-101 and C-2 both have a lecture 'week-1'; the one of B-101 moves to D-3.
    header = "title,start,end,room,uid\n"
    kept = "Physics,2026-10-24T10:00,2026-10-24T11:30,C-2,week-1\n"
    path = tmp_path / "timetable.csv"
    moving = "Physics,2026-10-24T10:00,2026-10-24T11:30,{},week-1\n"
    path.write_text(header + moving.format("B-101") + kept + OTHER_ROOM_ROW)
    assert import_file(capsys, db_url, path)[0] == 0

    path.write_text(header + moving.format("D-3") + kept + OTHER_ROOM_ROW)
    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 0
    assert "0 lectures added, 3 updated" in err
    with Store.open(db_url) as store:
        assert sorted(lecture.room for lecture in store.list_lectures()) == ["B-101", "C-2", "D-3"]
        assert [lecture.title for lecture in store.list_lectures(room="B-101")] == ["Chemistry"]


def test_ics_location_change_moves_lecture(tmp_path: Path, db_url: str, capsys) -> None:
    event = "UID:exam@school.example\nSUMMARY:Exam\nDTSTART:20260320T090000Z\nDURATION:PT2H\nLOCATION:{}"
    path = tmp_path / "exams.ics"
    path.write_text(calendar(event.format("B-101"), SERIES))
    assert import_file(capsys, db_url, path)[0] == 0
    with Store.open(db_url) as store:
        [exam_id] = [lecture.id for lecture in store.list_lectures() if lecture.title == "Exam"]

    path.write_text(calendar(event.format("C-2"), SERIES + "\nLOCATION:C-2"))
    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 0
    assert "0 lectures added, 4 updated" in err
    with Store.open(db_url) as store:
        lectures = store.list_lectures()
    assert {lecture.room for lecture in lectures} == {"C-2"}
    assert exam_id in {lecture.id for lecture in lectures}


def test_csv_repeated_column(tmp_path: Path, db_url: str, capsys) -> None:
    path = tmp_path / "timetable.csv"
    path.write_text("title,start,end,end\nPhysics,2026-10-24T10:00,2026-10-24T11:30,2026-10-24T12:00\n")

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 2
    assert_one_error(err, "timetable.csv", "has the column 'end' more than once")


def test_csv_header_case_and_spaces(tmp_path: Path, db_url: str, capsys) -> None:
    path = tmp_path / "timetable.csv"
    path.write_text("Title, Start ,END,Room\nPhysics,2026-10-24T10:00,2026-10-24T11:30,B-7\n")

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 0, err
    with Store.open(db_url) as store:
        [lecture] = store.list_lectures()
    assert lecture.title == "Physics"
    assert lecture.room == "B-7"


def test_csv_repeated_column_in_other_case(tmp_path: Path, db_url: str, capsys) -> None:
    path = tmp_path / "timetable.csv"
    path.write_text("title,Title,start,end\nA,B,2026-10-24T10:00,2026-10-24T11:30\n")

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 2
    assert_one_error(err, "has the column 'title' more than once")


@pytest.mark.parametrize(("prefix", "offset"), [(b"", 19), (b"\xef\xbb\xbf", 22)])
def test_csv_not_utf8(tmp_path: Path, db_url: str, capsys, prefix: bytes, offset: int) -> None:
    # Windows-1252, as Excel saves "CSV (Comma delimited)": 'é' is the single byte 0xe9.
    path = tmp_path / "timetable.csv"
    path.write_bytes(prefix + "title,start,end\nCafé,2026-10-24T10:00,2026-10-24T11:30\n".encode("cp1252"))

    exit_code, err = import_file(capsys, db_url, path)

    assert exit_code == 2
    assert_one_error(err, "timetable.csv' is not UTF-8", f"byte {offset} (line 2) is 0xe9", "CSV UTF-8")
