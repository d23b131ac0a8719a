"""Bad input to the aggregator's commands: one error line naming the value and the fix, exit 2.

Covers numbers out of range, the retention environment variable, a mistyped SQLite
path for commands that need an existing database, and the option combinations of
``report``, ``run``, ``lecture add`` and ``lecture start``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aggregator.cli import main
from aggregator.store import LectureSource, Store
from tests.test_aggregator_helpers import ROOM, assert_one_error, make_window, received


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'aggregator.db'}"
    Store.open(url).close()
    return url


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    exit_code = main(list(argv))
    captured = capsys.readouterr()
    return exit_code, captured.out, captured.err


@pytest.mark.parametrize(
    ("argv", "parts"),
    [
        (["purge", "--retention-days", "99999999"], ["Invalid --retention-days 99999999", "from 1 to 36500"]),
        (["purge", "--retention-days", "0"], ["Invalid --retention-days 0", "from 1 to 36500"]),
        (
            ["lecture", "start", "--room", "101", "--title", "X", "--planned-min", "99999999999"],
            ["Invalid --planned-min 99999999999", "1 to 1440 minutes"],
        ),
        (
            ["lecture", "start", "--room", "101", "--title", "X", "--planned-min", "0"],
            ["Invalid --planned-min 0", "1 to 1440 minutes"],
        ),
        (["report", "99999999999999999999"], ["Invalid LECTURE_ID 99999999999999999999", "aggregator lecture list"]),
        (["report", "0"], ["Invalid LECTURE_ID 0"]),
        (["report", "1", "--step-s", "99999999999999"], ["Invalid --step-s 99999999999999", "1 to 31622400 seconds"]),
        (["report", "1", "--step-s", "0"], ["Invalid --step-s 0"]),
    ],
)
def test_numbers_out_of_range(capsys, db_url: str, argv: list[str], parts: list[str]) -> None:
    exit_code, out, err = run_cli(capsys, *argv, "--db", db_url)

    assert exit_code == 2
    assert out == ""
    assert_one_error(err, *parts)


def test_retention_env_invalid(capsys, db_url: str, monkeypatch) -> None:
    monkeypatch.setenv("AGGREGATOR_RETENTION_DAYS", "abc")

    list_code, _, list_err = run_cli(capsys, "lecture", "list", "--db", db_url)
    purge_code, _, purge_err = run_cli(capsys, "purge", "--db", db_url)

    # Only purge reads the variable, so other commands keep working.
    assert list_code == 0
    assert "AGGREGATOR_RETENTION_DAYS" not in list_err
    assert purge_code == 2
    assert_one_error(purge_err, "Invalid AGGREGATOR_RETENTION_DAYS 'abc'", "whole number of days", "unset it")


def test_retention_env_out_of_range(capsys, db_url: str, monkeypatch) -> None:
    monkeypatch.setenv("AGGREGATOR_RETENTION_DAYS", "99999999")

    exit_code, _, err = run_cli(capsys, "purge", "--db", db_url)

    assert exit_code == 2
    assert_one_error(err, "Invalid AGGREGATOR_RETENTION_DAYS '99999999'", "from 1 to 36500")


def test_retention_env_applies(capsys, db_url: str, monkeypatch) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    with Store.open(db_url) as store:
        store.insert_windows([
            received(make_window("cam-1", now - timedelta(days=40), {"happy": 1})),
            received(make_window("cam-1", now - timedelta(days=20), {"sad": 1})),
        ])  # fmt: skip
    monkeypatch.setenv("AGGREGATOR_RETENTION_DAYS", " 30 ")

    exit_code, _, err = run_cli(capsys, "purge", "--db", db_url)

    assert exit_code == 0
    assert "(30 days): 1 window," in err
    with Store.open(db_url) as store:
        assert store.count_windows() == 1


def test_retention_option_beats_env(capsys, db_url: str, monkeypatch) -> None:
    monkeypatch.setenv("AGGREGATOR_RETENTION_DAYS", "abc")

    exit_code, _, err = run_cli(capsys, "purge", "--retention-days", "10", "--db", db_url)

    assert exit_code == 0
    assert "(10 days)" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "1"],
        ["report", "--room", ROOM, "--from", "2026-03-01", "--to", "2026-03-02"],
        ["lecture", "list"],
        ["lecture", "stop", "--room", ROOM],
        ["devices"],
    ],
)
def test_missing_sqlite_file_rejected(capsys, tmp_path: Path, argv: list[str]) -> None:
    typo = tmp_path / "typo.db"

    exit_code, out, err = run_cli(capsys, *argv, "--db", f"sqlite:///{typo}")

    assert exit_code == 2
    assert out == ""
    assert_one_error(err, f"No database at {str(typo)!r}", "check --db")
    assert not typo.exists()
    assert list(tmp_path.iterdir()) == []


def test_missing_sqlite_file_relative(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)

    exit_code, _, err = run_cli(capsys, "report", "1", "--db", "sqlite:///typo.db")

    assert exit_code == 2
    assert_one_error(err, "No database at 'typo.db'")
    assert not (tmp_path / "typo.db").exists()


def test_lecture_add_creates_database(capsys, tmp_path: Path) -> None:
    path = tmp_path / "new.db"

    exit_code, out, _ = run_cli(
        capsys, "lecture", "add", "--db", f"sqlite:///{path}", "--room", ROOM, "--title", "T",
        "--start", "2026-03-02T08:00Z", "--end", "2026-03-02T09:00Z",
    )  # fmt: skip

    assert exit_code == 0
    assert out == "1\n"
    assert path.exists()


def test_report_range_needs_room_or_course(capsys, db_url: str) -> None:
    exit_code, _, err = run_cli(capsys, "report", "--from", "2026-03-01", "--to", "2026-03-02", "--db", db_url)

    assert exit_code == 2
    assert_one_error(err, "needs --room ROOM or --course COURSE")
    assert "not both" not in err


def test_report_range_room_and_course(capsys, db_url: str) -> None:
    exit_code, _, err = run_cli(
        capsys, "report", "--room", ROOM, "--course", "MATH", "--from", "2026-03-01", "--to", "2026-03-02",
        "--db", db_url,
    )  # fmt: skip

    assert exit_code == 2
    assert_one_error(err, "either --room or --course", "not both")


def test_report_range_needs_both_ends(capsys, db_url: str) -> None:
    exit_code, _, err = run_cli(capsys, "report", "--room", ROOM, "--from", "2026-03-01", "--db", db_url)

    assert exit_code == 2
    assert_one_error(err, "needs both --from and --to")


def test_report_lecture_with_range(capsys, db_url: str) -> None:
    exit_code, _, err = run_cli(capsys, "report", "1", "--from", "2026-03-01", "--db", db_url)

    assert exit_code == 2
    assert_one_error(err, "LECTURE_ID 1", "not both")


@pytest.mark.parametrize(
    ("range_from", "range_to", "parts"),
    [
        ("2026-03-01", "yesterday", ["Invalid --to 'yesterday'", "2026-03-02"]),
        ("soon", "2026-03-01", ["Invalid --from 'soon'"]),
        ("2026-04-01", "2026-03-01", ["--to '2026-03-01' is not after --from '2026-04-01'", "swap"]),
        ("2026-03-01", "0001-01-01", ["--to '0001-01-01' is out of range"]),
    ],
)
def test_report_range_times(capsys, db_url: str, range_from: str, range_to: str, parts: list[str]) -> None:
    exit_code, _, err = run_cli(
        capsys, "report", "--room", ROOM, "--from", range_from, "--to", range_to, "--db", db_url
    )

    assert exit_code == 2
    assert_one_error(err, *parts)
    assert "T00:00" not in err


def test_password_file_needs_username(capsys, db_url: str, tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("secret\n")

    exit_code, _, err = run_cli(capsys, "run", "--db", db_url, "--password-file", str(password))

    assert exit_code == 2
    assert_one_error(err, f"--password-file {str(password)!r} needs --username", "Add --username")
    assert "secret" not in err


def test_lecture_add_course(capsys, db_url: str) -> None:
    exit_code, out, _ = run_cli(
        capsys, "lecture", "add", "--db", db_url, "--room", ROOM, "--title", "Linear Algebra",
        "--course", "MATH-101", "--start", "2026-03-02T08:00Z", "--end", "2026-03-02T09:00Z",
    )  # fmt: skip

    assert exit_code == 0
    with Store.open(db_url) as store:
        lecture = store.get_lecture(int(out))
    assert lecture.course == "MATH-101"
    assert lecture.source is LectureSource.MANUAL


def test_lecture_add_without_course(capsys, db_url: str) -> None:
    exit_code, out, _ = run_cli(
        capsys, "lecture", "add", "--db", db_url, "--room", ROOM, "--title", "T",
        "--start", "2026-03-02T08:00Z", "--end", "2026-03-02T09:00Z",
    )  # fmt: skip

    assert exit_code == 0
    with Store.open(db_url) as store:
        assert store.get_lecture(int(out)).course is None


def test_lecture_add_long_title(capsys, db_url: str) -> None:
    title = "x" * 5000

    exit_code, _, err = run_cli(
        capsys, "lecture", "add", "--db", db_url, "--room", ROOM, "--title", title,
        "--start", "2026-03-02T08:00Z", "--end", "2026-03-02T09:00Z",
    )  # fmt: skip

    assert exit_code == 2
    assert_one_error(err, "invalid title", "(5000 characters)", "1 to 200 printable characters")
    assert len(err) < 300


def test_lecture_start_twice_rejected(capsys, db_url: str) -> None:
    first_code, first_out, _ = run_cli(
        capsys, "lecture", "start", "--room", ROOM, "--title", "Q&A", "--db", db_url, "--tz", "UTC"
    )
    second_code, second_out, err = run_cli(
        capsys, "lecture", "start", "--room", ROOM, "--title", "Other", "--db", db_url, "--tz", "UTC"
    )

    assert first_code == 0
    assert second_code == 2
    assert second_out == ""
    assert_one_error(err, f"Lecture {int(first_out)} 'Q&A' already runs in room 'B-101'", "lecture stop --room B-101")
    with Store.open(db_url) as store:
        assert [lecture.title for lecture in store.list_lectures(room=ROOM)] == ["Q&A"]


def test_lecture_start_after_stop(capsys, db_url: str) -> None:
    assert main(["lecture", "start", "--room", ROOM, "--title", "One", "--db", db_url]) == 0
    assert main(["lecture", "stop", "--room", ROOM, "--db", db_url]) == 0

    exit_code = main(["lecture", "start", "--room", ROOM, "--title", "Two", "--db", db_url])

    assert exit_code == 0
    with Store.open(db_url) as store:
        assert [lecture.title for lecture in store.list_lectures(room=ROOM)] == ["One", "Two"]


def test_lecture_start_other_room(capsys, db_url: str) -> None:
    assert main(["lecture", "start", "--room", ROOM, "--title", "One", "--db", db_url]) == 0

    exit_code = main(["lecture", "start", "--room", "C-2", "--title", "Two", "--db", db_url])

    assert exit_code == 0


def test_lecture_start_beside_timetable(capsys, db_url: str) -> None:
    # A scheduled lecture that runs now does not block an ad hoc one.
    now = datetime.now(UTC)
    with Store.open(db_url) as store:
        store.add_lecture(ROOM, "Scheduled", now - timedelta(minutes=10), now + timedelta(minutes=50))

    exit_code = main(["lecture", "start", "--room", ROOM, "--title", "Ad hoc", "--db", db_url])

    assert exit_code == 0


@pytest.mark.parametrize(
    ("url", "parts"),
    [
        (
            "postgresql+psycopg://teacher:secret@127.0.0.1:54x2/school",
            ["Invalid database URL 'postgresql+psycopg://teacher:***@127.0.0.1:54x2/school'", "'54x2'"],
        ),
        ("postgresql+psycopg://teacher@[::1/school", ["Invalid database URL", "[::1/school"]),
        ("postgresql+psycopg://teacher:se/cret@127.0.0.1:x/school", ["Invalid database URL", "teacher:***@"]),
        ("not a url", ["Invalid database URL 'not a url'", "sqlite:///PATH"]),
    ],
)
def test_malformed_database_url(capsys, url: str, parts: list[str]) -> None:
    for argv in (["devices"], ["lecture", "list"], ["purge"]):
        exit_code, out, err = run_cli(capsys, *argv, "--db", url)

        assert exit_code == 2, argv
        assert out == ""
        assert "secret" not in err
        assert_one_error(err, *parts)
