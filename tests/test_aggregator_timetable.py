"""Timetable import from CSV and iCalendar, ad hoc lectures, and purge, through the CLI."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregator.cli import main
from aggregator.store import LectureSource, Store
from tests.test_aggregator_helpers import make_window, received

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

    assert "1 windows, 1 lectures" in capsys.readouterr().err
    with Store.open(db_url) as store:
        assert store.count_windows() == 1
        assert [lecture.title for lecture in store.list_lectures()] == ["New"]
