"""Store tests on real SQLite files: migrations, upserts, UTC handling, lectures, URL errors."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from aggregator.errors import ConfigError, LectureNotFoundError, StoreError
from aggregator.models import Base, LectureRow
from aggregator.store import _SQLITE_WINDOWS_IN_ROOM, MIGRATIONS_LOCATION, InsertResult, ReceivedWindow, Store
from tests.test_aggregator_helpers import ROOM, make_window, received

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path / 'aggregator.db'}")
    yield opened
    opened.close()


def test_migration_creates_schema(store: Store) -> None:
    inspector = inspect(store.engine)

    assert store.schema_revision() == "0003"
    assert {"windows", "lectures", "alembic_version"} <= set(inspector.get_table_names())
    window_columns = {column["name"] for column in inspector.get_columns("windows")}
    assert window_columns == {
        "device_id",
        "room",
        "window_start",
        "window_end",
        "frames_sampled",
        "faces_seen",
        "min_faces",
        "suppressed",
        "counts",
        "received_at",
    }
    indexes = {index["name"]: index["column_names"] for index in inspector.get_indexes("windows")}
    assert "ix_windows_room_window_start" not in indexes
    primary_key = inspector.get_pk_constraint("windows")["constrained_columns"]
    assert primary_key == ["room", "window_start", "device_id"]
    unique = {tuple(constraint["column_names"]) for constraint in inspector.get_unique_constraints("windows")}
    assert ("device_id", "window_start") in unique
    assert indexes["ix_windows_window_start"] == ["window_start"]
    lecture_indexes = {index["name"]: index["column_names"] for index in inspector.get_indexes("lectures")}
    assert lecture_indexes["ix_lectures_course_start"] == ["course", "start"]
    device_columns = {column["name"] for column in inspector.get_columns("devices")}
    assert {"device_id", "last_seen", "status", "stats_json"} <= device_columns


def test_models_match_migration(store: Store) -> None:
    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)

    assert differences == []


def test_sqlite_wal_and_busy_timeout(store: Store) -> None:
    with store.engine.connect() as connection:
        journal_mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar_one()
        busy_timeout_ms = connection.exec_driver_sql("PRAGMA busy_timeout").scalar_one()
        synchronous = connection.exec_driver_sql("PRAGMA synchronous").scalar_one()

    assert journal_mode == "wal"
    assert busy_timeout_ms == 10_000
    # 2 is FULL.
    assert synchronous == 2


def test_reopen_keeps_rows_and_revision(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'aggregator.db'}"
    with Store.open(url) as first:
        first.insert_windows([received(make_window("cam-1", START, {"happy": 1}))])

    with Store.open(url) as second:
        assert second.schema_revision() == "0003"
        assert second.count_windows() == 1


def test_concurrent_open_migrates_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'aggregator.db'}"

    def open_and_count(_: int) -> str | None:
        with Store.open(url) as opened:
            return opened.schema_revision()

    with ThreadPoolExecutor(max_workers=4) as pool:
        revisions = list(pool.map(open_and_count, range(4)))

    assert revisions == ["0003"] * 4


def test_insert_windows_skips_duplicates(store: Store) -> None:
    first = received(make_window("cam-1", START, {"happy": 2, "neutral": 1}))
    second = received(make_window("cam-1", START + timedelta(seconds=10), {"happy": 3}))
    other_device = received(make_window("cam-2", START, {"sad": 1}))

    assert store.insert_windows([first, second, first, other_device]) == InsertResult(stored=3, duplicates=1)
    assert store.insert_windows([first, second]) == InsertResult(stored=0, duplicates=2)
    assert store.insert_windows([]) == InsertResult(stored=0, duplicates=0)
    assert store.count_windows() == 3


def test_duplicate_keeps_first_values(store: Store) -> None:
    original = make_window("cam-1", START, {"happy": 2})
    changed = make_window("cam-1", START, {"sad": 5})

    store.insert_windows([received(original)])
    store.insert_windows([received(changed)])

    [row] = store.windows_in_room(ROOM, START, START + timedelta(minutes=1))
    assert row.counts == {"happy": 2}


def test_count_windows_by_device(store: Store) -> None:
    store.insert_windows(
        [
            received(make_window("cam-1", START, {"happy": 1})),
            received(make_window("cam-1", START + timedelta(seconds=10), {"happy": 1})),
            received(make_window("cam-2", START, {"happy": 1})),
        ]
    )

    assert store.count_windows() == 3
    assert store.count_windows("cam-1") == 2
    assert store.count_windows("cam-2") == 1
    assert store.count_windows("cam-3") == 0


def test_window_values_round_trip(store: Store) -> None:
    berlin_start = datetime(2026, 3, 2, 9, 0, tzinfo=timezone(timedelta(hours=1)))
    report = make_window("cam-1", berlin_start, {"happy": 4, "neutral": 3}, frames_sampled=17, min_faces=3)
    suppressed = make_window("cam-2", berlin_start, faces_seen=2)
    received_at = datetime(2026, 3, 2, 8, 0, 11, 250_000, tzinfo=UTC)
    store.insert_windows([received(suppressed)])
    store.insert_windows([ReceivedWindow(report=report, received_at=received_at)])

    rows = store.windows_in_room(ROOM, START, START + timedelta(minutes=1))
    assert [row.device_id for row in rows] == ["cam-1", "cam-2"]
    window = rows[0]
    assert window.window_start == START
    assert window.window_start.tzinfo == UTC
    assert window.window_end == START + timedelta(seconds=10)
    assert window.received_at == received_at
    assert window.frames_sampled == 17
    assert window.faces_seen == 7
    assert window.min_faces == 3
    assert window.suppressed is False
    assert window.counts == {"happy": 4, "neutral": 3}
    assert rows[1].suppressed is True
    assert rows[1].counts is None
    assert rows[1].faces_seen == 2


def test_windows_in_room_range_is_half_open(store: Store) -> None:
    store.insert_windows(
        [
            received(make_window("cam-1", START - timedelta(seconds=10), {"happy": 1})),
            received(make_window("cam-1", START, {"happy": 1})),
            received(make_window("cam-1", START + timedelta(seconds=50), {"happy": 1})),
            received(make_window("cam-1", START + timedelta(seconds=60), {"happy": 1})),
            received(make_window("cam-2", START, {"happy": 1}, room="C-202")),
        ]
    )

    rows = store.windows_in_room(ROOM, START, START + timedelta(seconds=60))

    assert [row.window_start for row in rows] == [START, START + timedelta(seconds=50)]


def test_naive_datetime_rejected(store: Store) -> None:
    with pytest.raises(StoreError, match="naive datetime"):
        store.windows_in_room(ROOM, datetime(2026, 3, 2, 8, 0), datetime(2026, 3, 2, 9, 0))


def test_add_and_list_lectures(store: Store) -> None:
    later = store.add_lecture(ROOM, "Analysis", START + timedelta(hours=2), START + timedelta(hours=3))
    earlier = store.add_lecture("C-202", "Algebra", START, START + timedelta(hours=1))

    assert store.get_lecture(later.id) == later
    assert later.start == START + timedelta(hours=2)
    assert later.duration_s == 3600
    assert [lecture.id for lecture in store.list_lectures()] == [earlier.id, later.id]
    assert store.list_lectures(room="C-202") == [earlier]


@pytest.mark.parametrize(
    ("room", "title", "end_offset_s", "message"),
    [
        (ROOM, "Algebra", 0, "is not after its start"),
        (ROOM, "Algebra", -60, "is not after its start"),
        ("", "Algebra", 60, "Invalid room"),
        (" B-101", "Algebra", 60, "Invalid room"),
        ("x" * 65, "Algebra", 60, "Invalid room"),
        (ROOM, "  ", 60, "Invalid title"),
        (ROOM, "t" * 201, 60, "Invalid title"),
    ],
)
def test_add_lecture_invalid(store: Store, room: str, title: str, end_offset_s: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        store.add_lecture(room, title, START, START + timedelta(seconds=end_offset_s))


def test_get_lecture_unknown_id(store: Store) -> None:
    with pytest.raises(LectureNotFoundError, match="Lecture 42 not found") as caught:
        store.get_lecture(42)

    assert "aggregator lecture list" in str(caught.value)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "In-memory SQLite"),
        ("sqlite:///:memory:", "In-memory SQLite"),
        ("mysql://user@localhost/db", "Unsupported database 'mysql'"),
        ("not a url", "Invalid database URL"),
        ("sqlite+nodriver:///x.db", "Unknown database driver"),
    ],
)
def test_open_invalid_url(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Store.open(url)


def test_open_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "aggregator.db"

    with pytest.raises(ConfigError, match="does not exist: create it"):
        Store.open(f"sqlite:///{missing}")


def test_open_unknown_revision(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'aggregator.db'}"
    with Store.open(url) as store, store.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))

    with pytest.raises(StoreError, match="revision '9999', which this aggregator does not know"):
        Store.open(url)


def _alembic(store: Store, action: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", MIGRATIONS_LOCATION)
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)


def test_upgrade_from_0002_keeps_windows_in_report_order(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'aggregator.db'}"
    with Store.open(url, upgrade=False) as old:
        _alembic(old, "upgrade", "0002")
        # Inserted out of time order, and a second room in between.
        old.insert_windows(
            [received(make_window("cam-1", START + timedelta(seconds=10 * i), {"happy": i})) for i in (2, 0, 1)]
            + [received(make_window("cam-2", START, {"sad": 1}, room="B-102"))]
        )
        old_indexes = {index["name"] for index in inspect(old.engine).get_indexes("windows")}
        insert_0002_ad_hoc_lectures(old, START)

    with caplog.at_level("WARNING", logger="aggregator.store"), Store.open(url) as upgraded:
        windows = upgraded.windows_in_room(ROOM, START, START + timedelta(minutes=1))
        with upgraded.engine.connect() as connection:
            plan = " ".join(
                str(row[-1])
                for row in connection.exec_driver_sql(
                    "EXPLAIN QUERY PLAN " + _SQLITE_WINDOWS_IN_ROOM,
                    (ROOM, "2026-03-02 08:00:00", "2026-03-03 08:00:00"),
                )
            )
            table_sql = connection.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'windows'").scalar_one()
        revision = upgraded.schema_revision()
        assert_0002_stops_kept(upgraded, START)
        upgraded_indexes = {index["name"] for index in inspect(upgraded.engine).get_indexes("windows")}
        # A duplicate of a copied window is still skipped.
        duplicate = upgraded.insert_windows([received(make_window("cam-1", START, {"happy": 9}))])
        _alembic(upgraded, "downgrade", "0002")
        downgraded_indexes = {index["name"] for index in inspect(upgraded.engine).get_indexes("windows")}
        count_after_downgrade = upgraded.count_windows()

    assert "ix_windows_room_window_start" in old_indexes
    assert "from revision 0002 to 0003" in caplog.text
    assert revision == "0003"
    assert [window.counts for window in windows] == [{"happy": 0}, {"happy": 1}, {"happy": 2}]
    assert "WITHOUT ROWID" in table_sql
    # The query reads the rows in the table's own order: no other index and no sort.
    assert "USING PRIMARY KEY" in plan
    assert "TEMP B-TREE" not in plan
    assert upgraded_indexes == {"ix_windows_window_start"}
    assert duplicate.duplicates == 1
    assert downgraded_indexes == old_indexes
    assert count_after_downgrade == 4


def insert_0002_ad_hoc_lectures(store: Store, start: datetime) -> None:
    """Insert, as the 0002 code stored them, an ad hoc lecture stopped early and one still running."""
    table = LectureRow.__table__
    with store.engine.begin() as connection:
        for room, end in (
            ("stopped-early", start + timedelta(minutes=20, microseconds=250_000)),
            ("still-running", start + timedelta(minutes=90)),
        ):
            connection.execute(table.insert().values(room=room, title="T", start=start, end=end, source="ad-hoc"))


def assert_0002_stops_kept(store: Store, start: datetime) -> None:
    """Check that the upgrade kept the early stop and left the running lecture stoppable."""
    with pytest.raises(LectureNotFoundError, match="was stopped at"):
        store.stop_lecture("stopped-early", start + timedelta(minutes=30))
    assert store.stop_lecture("still-running", start + timedelta(minutes=30)).end == start + timedelta(minutes=30)
