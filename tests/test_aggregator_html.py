"""CSV, JSON and HTML reports; the HTML page is loaded in a real headless Chromium."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from datetime import UTC, timedelta
from pathlib import Path

import pytest
from PIL import Image

from aggregator import exports
from aggregator.html_report import render_lecture_html, render_range_html
from aggregator.range_report import compute_range_report
from aggregator.report import build_report
from aggregator.store import Store
from aggregator.times import Zone
from edge_agent.payload import FER2013_LABELS
from tests.test_aggregator_helpers import (
    LECTURE_END,
    LECTURE_START,
    ROOM,
    known_lecture_windows,
    make_window,
    received,
)

UTC_ZONE = Zone("UTC", UTC)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    opened = Store.open(f"sqlite:///{tmp_path / 'aggregator.db'}")
    opened.insert_windows([received(window) for window in known_lecture_windows()])
    yield opened
    opened.close()


@pytest.fixture
def lecture_report(store: Store):
    lecture = store.add_lecture(ROOM, "Linear <Algebra>", LECTURE_START, LECTURE_END, course="MATH-101")
    windows = store.windows_in_room(ROOM, LECTURE_START, LECTURE_END)
    return build_report(lecture, windows, UTC_ZONE, step_s=60)


def test_lecture_csv_rows(lecture_report) -> None:
    rows = list(csv.DictReader(io.StringIO(exports.lecture_csv(lecture_report))))

    assert len(rows) == 5
    assert rows[0]["step_start"] == "2026-03-02T08:00:00+00:00"
    assert rows[0]["happy_percent"] == "43.75"
    assert rows[1]["status"] == "suppressed"
    assert rows[1]["happy_percent"] == ""
    assert rows[4]["dominant"] == "bored"


def test_lecture_json_values(lecture_report) -> None:
    data = json.loads(exports.lecture_json(lecture_report))

    assert data["lecture"]["course"] == "MATH-101"
    assert data["coverage"]["windows_expected"] == 60
    assert data["shares"][0] == {"label": "neutral", "count": 17, "percent": 53.125}
    assert data["timeline"][2]["status"] == "no data"
    assert data["timeline"][2]["percent"] is None


def test_range_report_course(store: Store) -> None:
    for day in range(3):
        start = LECTURE_START + timedelta(days=7 * day)
        store.add_lecture(ROOM, "Linear Algebra", start, start + timedelta(minutes=5), course="MATH-101")
    store.insert_windows([received(make_window("cam-1", LECTURE_START + timedelta(days=7), {"sad": 4}))])

    report = compute_range_report(
        store, UTC_ZONE, LECTURE_START, LECTURE_START + timedelta(days=21), course="MATH-101"
    )

    assert [summary.classified_faces for summary in report.lectures] == [32, 4, 0]
    data = json.loads(exports.range_json(report))
    assert data["lectures"][2]["percent"] is None
    rows = list(csv.DictReader(io.StringIO(exports.range_csv(report))))
    assert rows[1]["sad_percent"] == "100.00"
    html = render_range_html(report)
    assert 'id="trend-chart"' in html


def chromium() -> str:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("chromium is not installed: run 'make test' as root, or apt-get install chromium")
    return executable


@pytest.mark.slow
def test_html_in_chromium(lecture_report, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_lecture_html(lecture_report))
    screenshot = tmp_path / "report.png"
    base = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]

    dom = subprocess.run(
        [*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    subprocess.run(
        [*base, f"--screenshot={screenshot}", "--window-size=1000,1800", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )

    assert "Lecture 1: Linear &lt;Algebra&gt;" in dom
    assert "53.1" in dom
    for chart in ("coverage-chart", "distribution-chart", "timeline-chart"):
        assert f'id="{chart}"' in dom
    assert "http://" not in dom.replace("http://www.w3.org", "")
    image = Image.open(screenshot).convert("RGB")
    assert image.size == (1000, 1800)
    # The charts draw colored pixels; a page whose images failed to load is black on white.
    colors = image.resize((100, 180)).getcolors(maxcolors=100_000)
    assert len(colors) > 50


def test_cli_room_report_formats(store: Store, tmp_path: Path, capsys) -> None:
    from aggregator.cli import main

    store.add_lecture(ROOM, "Linear Algebra", LECTURE_START, LECTURE_END, course="MATH-101")
    database = ["--db", store.display_url, "--tz", "Europe/Berlin"]
    arguments = ["report", "--room", ROOM, "--from", "2026-03-01", "--to", "2026-03-03", *database]

    assert main([*arguments, "--format", "text"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Room B-101: 1 lecture from 2026-03-01 to 2026-03-03 (Europe/Berlin)")
    assert "2026-03-02 09:00" in text
    assert main([*arguments, "--format", "html", "--output", str(tmp_path / "room.html")]) == 0
    assert 'id="trend-chart"' in (tmp_path / "room.html").read_text()
    assert main(["report", *database]) == 2
    assert "needs a LECTURE_ID" in capsys.readouterr().err


def test_shares_chart_draws_every_step_with_data(lecture_report) -> None:
    """Isolated steps and the last step are drawn; steps without shares stay empty."""
    from matplotlib.figure import Figure

    from aggregator.charts import draw_shares
    from aggregator.report import StepStatus

    axes = Figure().subplots()
    draw_shares(axes, lecture_report)
    paths = [path for collection in axes.collections for path in collection.get_paths()]
    # Shares of a step with data add up to 100 %, so its middle at 50 % lies in one label's area.
    drawn = [
        any(path.contains_point((index + 0.5, 50.0)) for path in paths) for index in range(len(lecture_report.timeline))
    ]
    expected = [step.status is StepStatus.DATA for step in lecture_report.timeline]
    assert expected == [True, False, False, True, True]
    assert drawn == expected


def test_lecture_without_classified_faces_keeps_the_columns(tmp_path: Path) -> None:
    opened = Store.open(f"sqlite:///{tmp_path / 'suppressed.db'}")
    try:
        opened.insert_windows([received(make_window("cam-1", LECTURE_START, faces_seen=2))])
        lecture = opened.add_lecture(ROOM, "Quiet", LECTURE_START, LECTURE_END)
        report = build_report(lecture, opened.windows_in_room(ROOM, LECTURE_START, LECTURE_END), UTC_ZONE, 60)
    finally:
        opened.close()
    header = next(csv.reader(io.StringIO(exports.lecture_csv(report))))
    assert "happy_percent" in header
    assert "neutral_percent" in header
    data = json.loads(exports.lecture_json(report))
    assert data["labels"] == list(FER2013_LABELS)
    assert {share["percent"] for share in data["shares"]} == {None}


def test_range_report_counts_overlapping_windows_once(store: Store) -> None:
    """An ad hoc lecture inside a timetabled one shows its faces in both rows but once in the totals."""
    store.add_lecture(ROOM, "Linear Algebra", LECTURE_START, LECTURE_END, course="MATH-101")
    store.add_lecture(ROOM, "Ad hoc quiz", LECTURE_START, LECTURE_START + timedelta(minutes=1))

    report = compute_range_report(store, UTC_ZONE, LECTURE_START, LECTURE_END, room=ROOM)

    # known_lecture_windows: 32 classified faces, 16 of them in the first minute.
    assert [summary.classified_faces for summary in report.lectures] == [32, 16]
    assert report.classified_faces == 32
    assert sum(share.count for share in report.shares) == 32
