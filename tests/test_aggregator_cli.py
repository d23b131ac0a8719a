"""CLI tests: lecture add/list, report, and each error as one message with its exit status."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from aggregator.cli import _format_duration, main
from aggregator.report import MAX_STEP_S
from aggregator.store import MIGRATIONS_LOCATION, Store
from tests.conftest import REPO_ROOT, Broker, free_port
from tests.test_aggregator_helpers import (
    LECTURE_END,
    LECTURE_START,
    ROOM,
    assert_one_error,
    ingest_settings,
    known_lecture_windows,
    make_window,
    publisher,
    received,
    running_ingest,
    wait_until,
)
from tests.test_aggregator_postgres import fresh_postgres_database


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'aggregator.db'}"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    exit_code = main(list(argv))
    captured = capsys.readouterr()
    return exit_code, captured.out, captured.err


def test_lecture_add_prints_id(capsys, db_url: str) -> None:
    exit_code, out, err = run_cli(
        capsys, "lecture", "add", "--db", db_url, "--room", ROOM, "--title", "Linear Algebra",
        "--start", "2026-03-02T09:15", "--end", "2026-03-02T10:45", "--tz", "Europe/Berlin",
    )  # fmt: skip

    assert exit_code == 0
    assert out == "1\n"
    assert "Added lecture 1: 'Linear Algebra' in room B-101, 2026-03-02 09:15 UTC+01:00" in err
    with Store.open(db_url) as store:
        lecture = store.get_lecture(1)
    assert lecture.start == datetime(2026, 3, 2, 8, 15, tzinfo=UTC)
    assert lecture.end == datetime(2026, 3, 2, 9, 45, tzinfo=UTC)


def test_lecture_add_offset_overrides_zone(capsys, db_url: str) -> None:
    exit_code, out, _ = run_cli(
        capsys, "lecture", "add", "--db", db_url, "--room", ROOM, "--title", "T",
        "--start", "2026-03-02T08:15:00Z", "--end", "2026-03-02T10:45:00+02:00", "--tz", "America/New_York",
    )  # fmt: skip

    assert exit_code == 0
    with Store.open(db_url) as store:
        lecture = store.get_lecture(int(out))
    assert lecture.start == datetime(2026, 3, 2, 8, 15, tzinfo=UTC)
    assert lecture.end == datetime(2026, 3, 2, 8, 45, tzinfo=UTC)


def test_lecture_add_system_zone(capsys, db_url: str, monkeypatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")

    exit_code, out, _ = run_cli(
        capsys, "lecture", "add", "--db", db_url, "--room", ROOM, "--title", "T",
        "--start", "2026-07-01T09:00", "--end", "2026-07-01T10:00",
    )  # fmt: skip

    assert exit_code == 0
    with Store.open(db_url) as store:
        # New York is UTC-04:00 in July.
        assert store.get_lecture(int(out)).start == datetime(2026, 7, 1, 13, 0, tzinfo=UTC)


def test_lecture_database_from_environment(capsys, db_url: str, monkeypatch) -> None:
    monkeypatch.setenv("AGGREGATOR_DB", db_url)

    run_cli(capsys, "lecture", "add", "--room", ROOM, "--title", "From env",
            "--start", "2026-03-02T08:00Z", "--end", "2026-03-02T09:00Z")  # fmt: skip
    exit_code, out, _ = run_cli(capsys, "lecture", "list", "--tz", "UTC")

    assert exit_code == 0
    assert "From env" in out


def test_lecture_list(capsys, db_url: str) -> None:
    for title, start, end in [("Second", "2026-03-03T08:00Z", "2026-03-03T09:00Z"),
                              ("First", "2026-03-02T08:00Z", "2026-03-02T09:00Z")]:  # fmt: skip
        run_cli(capsys, "lecture", "add", "--db", db_url, "--room", ROOM, "--title", title,
                "--start", start, "--end", end)  # fmt: skip

    exit_code, out, _ = run_cli(capsys, "lecture", "list", "--db", db_url, "--tz", "Europe/Berlin")

    lines = out.splitlines()
    assert exit_code == 0
    assert lines[0].split() == ["id", "date", "start", "end", "duration", "room", "title", "(times", "in",
                                "Europe/Berlin)"]  # fmt: skip
    assert lines[1].split() == ["2", "Mon", "2026-03-02", "09:00", "10:00", "1", "h", "B-101", "First"]
    assert lines[2].split() == ["1", "Tue", "2026-03-03", "09:00", "10:00", "1", "h", "B-101", "Second"]


def test_lecture_list_columns_align(capsys, db_url: str) -> None:
    # An end after midnight shows its date. Seconds show only where they are not zero.
    for title, start, end in [("Late", "2026-03-02T23:30", "2026-03-03T01:15"),
                              ("Short", "2026-03-04T09:00:30", "2026-03-04T09:03")]:  # fmt: skip
        run_cli(capsys, "lecture", "add", "--db", db_url, "--room", "Lab 2", "--title", title,
                "--start", start, "--end", end, "--tz", "Europe/Berlin")  # fmt: skip

    exit_code, out, _ = run_cli(capsys, "lecture", "list", "--db", db_url, "--tz", "Europe/Berlin")

    assert exit_code == 0
    assert out.splitlines() == [
        "id  date            start     end               duration    room   title   (times in Europe/Berlin)",
        " 1  Mon 2026-03-02  23:30     2026-03-03 01:15  1 h 45 min  Lab 2  Late",
        " 2  Wed 2026-03-04  09:00:30  09:03             2 min 30 s  Lab 2  Short",
    ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(5400, "1 h 30 min"), (3600, "1 h"), (2700, "45 min"), (150, "2 min 30 s"), (0.4, "0 s"),
     (90_000, "25 h")],
)  # fmt: skip
def test_format_duration(seconds: float, text: str) -> None:
    assert _format_duration(seconds) == text


def test_lecture_list_empty(capsys, db_url: str) -> None:
    Store.open(db_url).close()

    exit_code, out, err = run_cli(capsys, "lecture", "list", "--db", db_url)

    assert exit_code == 0
    assert out == ""
    assert "aggregator lecture add" in err


def test_lecture_list_unknown_room(capsys, db_url: str) -> None:
    run_cli(capsys, "lecture", "add", "--db", db_url, "--room", ROOM, "--title", "T",
            "--start", "2026-03-02T08:00Z", "--end", "2026-03-02T09:00Z")  # fmt: skip

    exit_code, out, err = run_cli(capsys, "lecture", "list", "--db", db_url, "--room", "nosuch")

    assert exit_code == 0
    assert out == ""
    assert "No lectures in room 'nosuch'" in err
    assert "yet" not in err


@pytest.mark.parametrize(
    ("start", "end", "duration"),
    [
        # Summer time ends at 03:00 on 25 October 2026 in Berlin: 02:30 to 02:30 is 1 h.
        ("2026-10-25T00:30Z", "2026-10-25T01:30Z", ["1", "h"]),
        # Summer time begins at 02:00 on 29 March 2026: 01:30 to 03:30 is 1 h.
        ("2026-03-29T00:30Z", "2026-03-29T01:30Z", ["1", "h"]),
        ("2026-03-28T23:00Z", "2026-03-29T03:00Z", ["4", "h"]),
    ],
)
def test_lecture_list_duration_across_dst(
    capsys, db_url: str, start: str, end: str, duration: list[str]
) -> None:
    run_cli(capsys, "lecture", "add", "--db", db_url, "--room", ROOM, "--title", "Night",
            "--start", start, "--end", end)  # fmt: skip

    exit_code, out, _ = run_cli(capsys, "lecture", "list", "--db", db_url, "--tz", "Europe/Berlin")

    assert exit_code == 0
    cells = out.splitlines()[1].split()
    assert cells[-4:-2] == duration


def test_lecture_import_names_system_zone(capsys, db_url: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    path = tmp_path / "timetable.csv"
    path.write_text("title,start,end\nPhysics,2026-07-01T09:00,2026-07-01T10:00\n")

    exit_code, _, err = run_cli(capsys, "lecture", "import", str(path), "--room", ROOM, "--db", db_url)

    assert exit_code == 0
    assert "times without a UTC offset were read in America/New_York (the system zone" in err
    assert "give --tz" in err


def test_report_prints_text(capsys, db_url: str) -> None:
    with Store.open(db_url) as store:
        store.insert_windows([received(window) for window in known_lecture_windows()])
        lecture = store.add_lecture(ROOM, "Linear Algebra", LECTURE_START, LECTURE_END)

    exit_code, out, _ = run_cli(capsys, "report", str(lecture.id), "--db", db_url, "--tz", "Europe/Berlin")

    assert exit_code == 0
    assert out.startswith("Lecture 1: Linear Algebra\n")
    assert "Start:  2026-03-02 09:00:00 UTC+01:00" in out
    assert "  Windows received:    7 of 60 expected (11.7 %)" in out
    assert "  09:01        2       -  suppressed" in out
    assert "  09:02        0       -  no data" in out


def test_report_step_option(capsys, db_url: str) -> None:
    with Store.open(db_url) as store:
        lecture = store.add_lecture(ROOM, "Linear Algebra", LECTURE_START, LECTURE_END)

    exit_code, out, _ = run_cli(
        capsys, "report", str(lecture.id), "--db", db_url, "--tz", "UTC", "--step-s", "150"
    )

    assert exit_code == 0
    assert "Timeline (150 s steps" in out
    assert "  08:00:00        0       -  no data" in out
    assert "  08:02:30        0       -  no data" in out


def test_report_unknown_lecture(capsys, db_url: str) -> None:
    Store.open(db_url).close()

    exit_code, out, err = run_cli(capsys, "report", "99", "--db", db_url)

    assert exit_code == 2
    assert out == ""
    assert err.startswith("aggregator: error: Lecture 99 not found")
    assert "aggregator lecture list" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (
            "2026-03-02T10:00",
            "2026-03-02T09:00",
            "--end '2026-03-02T09:00' is not after --start '2026-03-02T10:00'",
        ),
        ("2026-03-02T10:00", "2026-03-02T10:00", "is not after --start"),
        ("yesterday", "2026-03-02T10:00", "Invalid --start 'yesterday'"),
        ("2026-03-02", "2026-03-02T10:00", "has no time of day"),
        ("2026-03-29T02:30", "2026-03-29T04:00", "does not exist in Europe/Berlin"),
        ("2026-10-25T02:30", "2026-10-25T04:00", "occurs twice in Europe/Berlin"),
    ],
)
def test_lecture_add_invalid_times(capsys, db_url: str, start: str, end: str, message: str) -> None:
    exit_code, out, err = run_cli(
        capsys, "lecture", "add", "--db", db_url, "--room", ROOM, "--title", "T",
        "--start", start, "--end", end, "--tz", "Europe/Berlin",
    )  # fmt: skip

    assert exit_code == 2
    assert out == ""
    assert message in err
    assert err.count("\n") == 1


def test_unknown_time_zone(capsys, db_url: str) -> None:
    exit_code, _, err = run_cli(capsys, "lecture", "list", "--db", db_url, "--tz", "Mars/Olympus")

    assert exit_code == 2
    assert "Unknown time zone 'Mars/Olympus'" in err


def test_invalid_database_url(capsys) -> None:
    exit_code, _, err = run_cli(capsys, "lecture", "list", "--db", "mysql://user@localhost/db")

    assert exit_code == 2
    assert "Unsupported database 'mysql'" in err


def test_unreachable_postgres(capsys) -> None:
    port = free_port()

    exit_code, _, err = run_cli(
        capsys, "lecture", "list", "--db", f"postgresql+psycopg://postgres:secret@127.0.0.1:{port}/x"
    )

    assert exit_code == 1
    assert f"127.0.0.1:{port}" in err
    assert "secret" not in err
    assert err.count("\n") == 1


def test_run_unreachable_broker(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    completed = subprocess.run(
        [sys.executable, "-m", "aggregator", "run", "--db", db_url, "--port", str(port)],
        capture_output=True, text=True, env=environment, timeout=60,
    )  # fmt: skip

    assert completed.returncode == 1
    error_lines = [line for line in completed.stderr.splitlines() if line.startswith("aggregator: error:")]
    assert len(error_lines) == 1
    assert f"Cannot connect to the MQTT broker at 127.0.0.1:{port}" in error_lines[0]
    assert "Start the broker, or point --host and --port at a running one" in error_lines[0]


def test_imports_no_edge_packages() -> None:
    # A server installs only the aggregator extra, without the agent's camera and inference packages.
    code = (
        "import sys, aggregator.cli, aggregator.ingest, aggregator.report, aggregator.text_report; "
        "edge = ('cv2', 'numpy', 'ai_edge_litert', 'tflite_runtime'); "
        "print(sorted(name for name in edge if name in sys.modules))"
    )
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=60, check=True
    )

    assert completed.stdout.strip() == "[]"


def test_run_invalid_option(capsys, db_url: str) -> None:
    exit_code, _, err = run_cli(capsys, "run", "--db", db_url, "--port", "70000")

    assert exit_code == 2
    assert "Invalid broker port 70000" in err


def test_usage_error_exit_code(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["report", "not-a-number"])

    assert caught.value.code == 2
    assert "invalid int value: 'not-a-number'" in capsys.readouterr().err


def test_lecture_year_out_of_range(tmp_path, capsys):
    from aggregator.cli import main

    database = f"sqlite:///{tmp_path / 'a.db'}"
    code = main(
        ["lecture", "add", "--db", database, "--room", "101", "--title", "Old",
         "--start", "0001-01-01T08:00", "--end", "0001-01-01T09:00", "--tz", "Europe/Berlin"]
    )
    assert code == 2
    assert "is out of range: use a year from 1970 to 9000" in capsys.readouterr().err


READ_ONLY_COMMANDS = [
    ("report", "1"),
    ("report", "--room", ROOM, "--from", "2026-03-01", "--to", "2026-04-01"),
    ("lecture", "list"),
    ("lecture", "stop", "--room", ROOM),
    ("devices",),
]


@pytest.mark.parametrize("command", READ_ONLY_COMMANDS, ids=" ".join)
def test_read_command_empty_sqlite_file(capsys, tmp_path: Path, command: tuple[str, ...]) -> None:
    path = tmp_path / "aggregator.db"
    path.touch()

    exit_code, out, err = run_cli(capsys, *command, "--db", f"sqlite:///{path}")

    assert exit_code == 2
    assert out == ""
    assert_one_error(err, f"The database {path} contains no aggregator tables yet", "'aggregator run'")
    assert path.stat().st_size == 0


def test_read_command_foreign_sqlite_database(capsys, tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
        connection.commit()

    exit_code, _, err = run_cli(capsys, "lecture", "list", "--db", f"sqlite:///{path}")

    assert exit_code == 2
    assert_one_error(err, "contains no aggregator tables yet")
    with closing(sqlite3.connect(path)) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    tables = [name for (name,) in rows]
    assert tables == ["notes"]


@pytest.fixture
def empty_postgres_url() -> Iterator[str]:
    """URL of a new PostgreSQL database without tables, dropped after the test."""
    with fresh_postgres_database("aggregator_test_empty") as url:
        yield url


def test_read_commands_empty_postgres_database(capsys, empty_postgres_url: str) -> None:
    for read_command in READ_ONLY_COMMANDS:
        exit_code, out, err = run_cli(capsys, *read_command, "--db", empty_postgres_url)

        assert exit_code == 2, read_command
        assert out == ""
        assert_one_error(err, "contains no aggregator tables yet", "'aggregator run'")

    engine = create_engine(empty_postgres_url)
    try:
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def test_read_command_upgrades_older_schema(capsys, db_url: str) -> None:
    # A database that an older version created is upgraded, as 'aggregator run' would do it.
    engine = create_engine(db_url)
    config = Config()
    config.set_main_option("script_location", MIGRATIONS_LOCATION)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    engine.dispose()

    exit_code, out, err = run_cli(capsys, "lecture", "list", "--db", db_url)

    assert exit_code == 0, err
    assert out == ""
    with Store.open(db_url, upgrade=False) as store:
        assert store.schema_revision() == ScriptDirectory.from_config(config).get_current_head()


INVALID_STEPS = ["0", "-5", "nan", "inf", "1.5", "", str(MAX_STEP_S + 1)]


@pytest.mark.parametrize("step", INVALID_STEPS)
def test_range_report_invalid_step(capsys, db_url: str, step: str) -> None:
    Store.open(db_url).close()

    exit_code, out, err = run_cli(
        capsys, "report", "--room", ROOM, "--from", "2026-03-01", "--to", "2026-04-01", "--db", db_url,
        "--step-s", step,
    )  # fmt: skip

    assert exit_code == 2
    assert out == ""
    assert_one_error(err, "Invalid --step-s", step, f"from 1 to {MAX_STEP_S} seconds")


@pytest.mark.parametrize("step", INVALID_STEPS)
def test_lecture_report_invalid_step(capsys, db_url: str, step: str) -> None:
    with Store.open(db_url) as store:
        lecture = store.add_lecture(ROOM, "Linear Algebra", LECTURE_START, LECTURE_END)

    exit_code, out, err = run_cli(capsys, "report", str(lecture.id), "--db", db_url, "--step-s", step)

    assert exit_code == 2
    assert out == ""
    assert_one_error(err, "Invalid --step-s", step, f"from 1 to {MAX_STEP_S} seconds")


def test_range_report_largest_step(capsys, db_url: str) -> None:
    with Store.open(db_url) as store:
        store.add_lecture(ROOM, "Linear Algebra", LECTURE_START, LECTURE_END)

    exit_code, out, err = run_cli(
        capsys, "report", "--room", ROOM, "--from", "2026-03-01", "--to", "2026-04-01", "--db", db_url,
        "--step-s", str(MAX_STEP_S),
    )  # fmt: skip

    assert exit_code == 0, err
    assert "Linear Algebra" in out


def test_ingest_counts_windows_and_device_messages(mqtt_broker: Broker, db_url: str, caplog) -> None:
    caplog.set_level(logging.INFO, logger="aggregator.ingest")
    with Store.open(db_url) as store:
        with running_ingest(store, ingest_settings(mqtt_broker)) as ingest, publisher(mqtt_broker) as client:
            client.publish_window(make_window("cam-1", LECTURE_START, {"happy": 2}))
            client.publish_window(make_window("cam-1", LECTURE_START, {"happy": 2}))
            client.publish_window(make_window("cam-2", LECTURE_START, {"sad": 1}))
            client.publish_bytes("classroom/cam-1/status", b"online")
            client.publish_bytes("classroom/cam-2/status", b"sleeping")
            wait_until(lambda: ingest.stats().received == 5 and ingest.stats().queued == 0, "5 messages")
            stats = ingest.stop()

    assert stats.windows_received == 3
    assert stats.device_messages_received == 2
    assert stats.received == 5
    assert stats.stored == 2
    assert stats.duplicates == 1
    assert stats.rejected == 1
    assert (
        "Stopped ingest: windows received 3, stored 2, duplicates 1; device messages received 2; "
        "messages rejected 1 (invalid_device_message: 1)"
    ) in caplog.text


def test_lecture_list_into_closed_pipe(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'aggregator.db'}"
    with Store.open(db_url) as store:
        for day in range(1, 29):
            store.add_lecture("B-1", f"Lecture {day}", datetime(2026, 3, day, 8, tzinfo=UTC),
                              datetime(2026, 3, day, 9, tzinfo=UTC))  # fmt: skip
    command = [sys.executable, "-m", "aggregator", "lecture", "list", "--db", db_url]
    # The reader closes the pipe before the command writes its rows, as 'head -0' would.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT)
    assert process.stdout is not None
    process.stdout.close()
    _, err = process.communicate(timeout=60)

    assert "Traceback" not in err.decode()
    assert process.returncode == 1
