"""Report tests: exact shares, coverage and timeline of known windows, and their text rendering."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from aggregator import exports
from aggregator.errors import ConfigError, LectureNotFoundError
from aggregator.range_report import compute_range_report
from aggregator.report import MAX_STEP_S, LectureReport, build_report, compute_report, order_labels
from aggregator.store import Lecture, Store, StoredWindow
from aggregator.text_report import render_text
from aggregator.times import Zone
from tests.test_aggregator_helpers import (
    LECTURE_END,
    LECTURE_START,
    ROOM,
    assert_known_report,
    known_lecture,
    known_lecture_windows,
    make_window,
    received,
)

UTC_ZONE = Zone("UTC", UTC)
BERLIN = Zone("Europe/Berlin", ZoneInfo("Europe/Berlin"))


def stored(report_windows: list) -> list[StoredWindow]:
    """Turn payloads into rows as the store returns them, without a database."""
    return [
        StoredWindow(
            device_id=w.device_id,
            room=w.room,
            window_start=w.window_start,
            window_end=w.window_end,
            frames_sampled=w.frames_sampled,
            faces_seen=w.faces_seen,
            min_faces=w.min_faces,
            suppressed=w.suppressed,
            counts=w.counts,
            received_at=w.window_end,
        )
        for w in report_windows
    ]


@pytest.fixture
def known_report() -> LectureReport:
    return build_report(known_lecture(), stored(known_lecture_windows()), UTC_ZONE, 60)


def test_report_known_lecture(known_report: LectureReport) -> None:
    assert_known_report(known_report)


def test_report_from_sqlite_store(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'aggregator.db'}") as store:
        store.insert_windows([received(window) for window in known_lecture_windows()])
        lecture = store.add_lecture(ROOM, "Linear Algebra", LECTURE_START, LECTURE_END)

        report = compute_report(store, lecture.id, UTC_ZONE, step_s=60)

    assert report.lecture == lecture
    assert_known_report(report)


def test_report_unknown_lecture(tmp_path: Path) -> None:
    with (
        Store.open(f"sqlite:///{tmp_path / 'aggregator.db'}") as store,
        pytest.raises(LectureNotFoundError, match="Lecture 5 not found"),
    ):
        compute_report(store, 5, UTC_ZONE)


def test_text_report_known_lecture(known_report: LectureReport) -> None:
    text = render_text(known_report)
    lines = text.splitlines()

    assert lines[0] == "Lecture 1: Linear Algebra"
    assert "Room:   B-101" in lines
    assert "Start:  2026-03-02 08:00:00 UTC+00:00" in lines
    assert "End:    2026-03-02 08:05:00 UTC+00:00" in lines
    assert "  Windows received:    7 of 60 expected (11.7 %)" in lines
    assert "  Suppressed windows:  3" in lines
    assert "  Frames sampled:      140" in lines
    assert "  Face detections:     41" in lines
    assert "  Classified faces:    32" in lines
    assert "    cam-2: 10 s windows, 3 of 30 received, 2 suppressed" in lines
    assert "Emotion shares (% of 32 classified faces)" in lines
    assert "  neutral   53.1 %        17" in lines
    assert "  sad        6.2 %         2" in lines
    assert "  time   windows   faces   angry   happy     sad  neutral   bored  dominant" in lines
    assert "  08:00        2      16     0.0    43.8    12.5     43.8     0.0  happy" in lines
    assert "  08:01        2       -  suppressed" in lines
    assert "  08:02        0       -  no data" in lines
    assert "  08:03        2      10     0.0    10.0     0.0     90.0     0.0  neutral" in lines
    assert "  08:04        1       6    33.3     0.0     0.0     16.7    50.0  bored" in lines


def test_report_across_daylight_saving_change() -> None:
    # Berlin skips 02:00-03:00 local on 2026-03-29: 00:30Z is 01:30 CET, 01:00Z is 03:00 CEST.
    start = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)
    lecture = Lecture(id=3, room=ROOM, title="Night Lab", start=start, end=start + timedelta(hours=1))
    windows = stored(
        [
            make_window("cam-1", start + timedelta(minutes=20), {"happy": 3, "neutral": 1}),
            make_window("cam-1", start + timedelta(minutes=35), {"sad": 2}),
        ]
    )

    report = build_report(lecture, windows, BERLIN, 900)
    lines = render_text(report).splitlines()

    assert [step.start.astimezone(BERLIN.tzinfo).strftime("%H:%M") for step in report.timeline] == [
        "01:30",
        "01:45",
        "03:00",
        "03:15",
    ]
    assert [step.windows for step in report.timeline] == [0, 1, 1, 0]
    assert "Start:  2026-03-29 01:30:00 UTC+01:00" in lines
    assert "End:    2026-03-29 03:30:00 UTC+02:00" in lines
    assert "Zone:   Europe/Berlin" in lines
    timeline_rows = [line for line in lines if line.startswith("  0")]
    assert [row.split()[0:2] for row in timeline_rows] == [
        ["01:30", "+0100"],
        ["01:45", "+0100"],
        ["03:00", "+0200"],
        ["03:15", "+0200"],
    ]
    assert timeline_rows[1].endswith("happy")
    assert timeline_rows[2].endswith("sad")


def test_report_across_local_midnight() -> None:
    start = datetime(2026, 3, 2, 22, 30, tzinfo=UTC)
    lecture = Lecture(id=4, room=ROOM, title="Late", start=start, end=start + timedelta(hours=1))

    report = build_report(lecture, [], BERLIN, 1800)
    lines = render_text(report).splitlines()

    assert "  2026-03-02 23:30        0       -  no data" in lines
    assert "  2026-03-03 00:00        0       -  no data" in lines


def test_report_partial_last_step() -> None:
    lecture = Lecture(
        id=5, room=ROOM, title="Short", start=LECTURE_START, end=LECTURE_START + timedelta(seconds=150)
    )

    report = build_report(lecture, [], UTC_ZONE, 60)

    assert len(report.timeline) == 3
    assert report.timeline[-1].start == LECTURE_START + timedelta(seconds=120)
    assert report.timeline[-1].end == LECTURE_START + timedelta(seconds=150)
    assert report.coverage.windows_expected == 0
    assert report.coverage.percent is None
    assert "Emotion shares\n  no classified faces" in render_text(report)


def test_report_seconds_in_step_times() -> None:
    lecture = Lecture(
        id=6, room=ROOM, title="Short", start=LECTURE_START, end=LECTURE_START + timedelta(seconds=90)
    )

    lines = render_text(build_report(lecture, [], UTC_ZONE, 30)).splitlines()

    assert "  08:00:30        0       -  no data" in lines


def test_expected_windows_round_up() -> None:
    # 95 s lecture, 10 s windows: at most 10 windows can start inside it.
    lecture = Lecture(
        id=7, room=ROOM, title="Odd", start=LECTURE_START, end=LECTURE_START + timedelta(seconds=95)
    )
    windows = stored(
        [make_window("cam-1", LECTURE_START + timedelta(seconds=10 * i), {"happy": 1}) for i in range(10)]
    )

    coverage = build_report(lecture, windows, UTC_ZONE, 60).coverage

    assert coverage.windows_expected == 10
    assert coverage.percent == 100.0


@pytest.mark.parametrize(
    ("step_s", "shown"),
    [(0, "0"), (-5, "-5"), (MAX_STEP_S + 1, str(MAX_STEP_S + 1)), (10**30, str(10**30)),
     (float("inf"), "inf"), (float("nan"), "nan"), (1.5, "1.5"), (60.0, "60.0"), (True, "True"),
     ("60", "'60'")],
)  # fmt: skip
def test_report_invalid_step(step_s: object, shown: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build_report(known_lecture(), [], UTC_ZONE, step_s)  # type: ignore[arg-type]

    assert str(raised.value) == (
        f"Invalid --step-s {shown}: use a whole number from 1 to {MAX_STEP_S} seconds (366 days)"
    )


def test_report_largest_step(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'aggregator.db'}") as store:
        lecture = store.add_lecture(ROOM, "Linear Algebra", LECTURE_START, LECTURE_END)
        report = compute_report(store, lecture.id, UTC_ZONE, step_s=MAX_STEP_S)

    assert len(report.timeline) == 1
    assert report.timeline[0].end == LECTURE_END


def test_range_report_lecture_longer_than_largest_step(tmp_path: Path) -> None:
    # Its summary needs no timeline, so a lecture longer than MAX_STEP_S is reported too.
    end = LECTURE_START + timedelta(seconds=2 * MAX_STEP_S + 1)
    with Store.open(f"sqlite:///{tmp_path / 'aggregator.db'}") as store:
        store.insert_windows([received(make_window("cam-1", LECTURE_START, {"happy": 3}))])
        store.add_lecture(ROOM, "Two years", LECTURE_START, end)
        range_report = compute_range_report(store, UTC_ZONE, LECTURE_START, end, room=ROOM)

    [summary] = range_report.lectures
    assert summary.windows_received == 1
    assert summary.classified_faces == 3


def test_report_too_many_steps() -> None:
    lecture = Lecture(
        id=8, room=ROOM, title="Long", start=LECTURE_START, end=LECTURE_START + timedelta(days=1)
    )

    with pytest.raises(ConfigError, match="more than 10000: use at least 9"):
        build_report(lecture, [], UTC_ZONE, 1)


def test_order_labels() -> None:
    assert order_labels(["neutral", "bored", "angry", "neutral", "attentive"]) == (
        "angry",
        "neutral",
        "attentive",
        "bored",
    )


def test_range_exports_formula_titles_and_no_faces(tmp_path: Path) -> None:
    end = LECTURE_START + timedelta(minutes=30)
    with Store.open(f"sqlite:///{tmp_path / 'aggregator.db'}") as store:
        # One suppressed window: the range has windows but no classified faces.
        store.insert_windows([received(make_window("cam-1", LECTURE_START, None, faces_seen=2))])
        store.add_lecture(ROOM, '=HYPERLINK("http://example.invalid","x")', LECTURE_START, end, course="-1+1")
        range_report = compute_range_report(store, UTC_ZONE, LECTURE_START, end, room=ROOM)

    rows = list(csv.DictReader(io.StringIO(exports.range_csv(range_report))))
    data = json.loads(exports.range_json(range_report))

    assert rows[0]["title"] == '\'=HYPERLINK("http://example.invalid","x")'
    assert rows[0]["course"] == "'-1+1"
    assert rows[0]["room"] == ROOM
    # JSON keeps the text as it was entered.
    assert data["lectures"][0]["title"] == '=HYPERLINK("http://example.invalid","x")'
    assert data["shares"]
    assert [share["percent"] for share in data["shares"]] == [None] * len(data["shares"])
