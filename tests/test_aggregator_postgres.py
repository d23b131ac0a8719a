"""The store, ingest and report tests on PostgreSQL.

The session creates a uniquely named database on the server at
AGGREGATOR_TEST_POSTGRES_ADMIN (default: user postgres at 127.0.0.1:5432, database
postgres) and drops it at the end. Without a reachable server the tests are skipped,
except when the CI variable is set, where they fail.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from aggregator.models import Base
from aggregator.report import compute_report
from aggregator.store import InsertResult, Store
from aggregator.times import Zone
from tests.conftest import Broker
from tests.test_aggregator_helpers import (
    LECTURE_END,
    LECTURE_START,
    ROOM,
    assert_known_report,
    ingest_settings,
    known_lecture_windows,
    make_window,
    publisher,
    received,
    running_ingest,
    wait_until,
)

ADMIN_URL = os.environ.get(
    "AGGREGATOR_TEST_POSTGRES_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}")
    pytest.skip(f"PostgreSQL not available: {reason}")


@contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """Create a database without tables, yield its URL, and drop it afterwards.

    Skips the test where no server is reachable, and fails it in CI.
    """
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed: pip install 'classroom-emotion-stats[postgres]'")
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as error:
        admin.dispose()
        _unavailable(f"{make_url(ADMIN_URL).render_as_string(hide_password=True)}: {error.orig}")
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh database, dropped after the session."""
    with fresh_postgres_database("aggregator_test") as url:
        yield url


@pytest.fixture
def store(postgres_url: str) -> Iterator[Store]:
    opened = Store.open(postgres_url)
    with opened.engine.begin() as connection:
        connection.execute(text("TRUNCATE windows, lectures, devices RESTART IDENTITY"))
    yield opened
    opened.close()


def test_postgres_models_match_migration(store: Store) -> None:
    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)

    assert store.schema_revision() == "0003"
    assert differences == []


def test_postgres_insert_skips_duplicates(store: Store) -> None:
    start = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    first = received(make_window("cam-1", start, {"happy": 2}))
    second = received(make_window("cam-1", start + timedelta(seconds=10), {"happy": 3}))

    assert store.insert_windows([first, second, first]) == InsertResult(stored=2, duplicates=1)
    assert store.insert_windows([first]) == InsertResult(stored=0, duplicates=1)
    assert store.count_windows("cam-1") == 2


def test_postgres_times_in_other_session_zone(postgres_url: str, store: Store) -> None:
    start = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    store.insert_windows([received(make_window("cam-1", start, {"happy": 2}))])
    # A server or role whose TimeZone is not UTC returns timestamps in that zone.
    url = make_url(postgres_url).update_query_dict({"options": "-c timezone=America/New_York"})

    with Store.open(url.render_as_string(hide_password=False)) as other:
        [row] = other.windows_in_room(ROOM, start, start + timedelta(minutes=1))

    assert row.window_start == start
    assert row.window_start.utcoffset() == timedelta(0)


def test_postgres_ingest_and_report(mqtt_broker: Broker, store: Store) -> None:
    windows = known_lecture_windows()

    with running_ingest(store, ingest_settings(mqtt_broker, client_id="aggregator-postgres")) as ingest:
        with publisher(mqtt_broker) as client:
            for window in windows:
                client.publish_window(window)
            # Every window a second time: the rows must not change.
            for window in windows:
                client.publish_window(window)
        wait_until(
            lambda: ingest.stats().stored + ingest.stats().duplicates == 2 * len(windows), "all processed"
        )
        stats = ingest.stop()

    assert stats.stored == len(windows)
    assert stats.duplicates == len(windows)
    assert store.count_windows() == len(windows)

    lecture = store.add_lecture(ROOM, "Linear Algebra", LECTURE_START, LECTURE_END)
    report = compute_report(store, lecture.id, Zone("UTC", UTC), step_s=60)

    assert report.lecture == lecture
    assert_known_report(report)


def test_postgres_two_workers_shared(mqtt_broker: Broker, store: Store, postgres_url: str) -> None:
    start = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    windows = [
        make_window(f"cam-{index % 4}", start + timedelta(seconds=10 * (index // 4)), {"happy": index % 5 + 1})
        for index in range(400)
    ]
    second_store = Store.open(postgres_url)
    first = ingest_settings(mqtt_broker, client_id="aggregator-a", share_group="pool", batch_max_rows=50)
    second = ingest_settings(mqtt_broker, client_id="aggregator-b", share_group="pool", batch_max_rows=50)
    try:
        with running_ingest(store, first) as worker_a, running_ingest(second_store, second) as worker_b:
            with publisher(mqtt_broker) as client:
                for window in windows:
                    client.publish_window(window)
                # Half of them again: duplicates may reach either worker.
                for window in windows[::2]:
                    client.publish_window(window)
            total = len(windows) + len(windows[::2])
            wait_until(
                lambda: sum(w.stats().stored + w.stats().duplicates for w in (worker_a, worker_b)) == total,
                "all windows processed by the two workers",
            )
            stats_a = worker_a.stop()
            stats_b = worker_b.stop()
    finally:
        second_store.close()

    assert stats_a.stored > 0
    assert stats_b.stored > 0
    assert stats_a.stored + stats_b.stored == len(windows)
    assert stats_a.duplicates + stats_b.duplicates == len(windows[::2])
    assert store.count_windows() == len(windows)
    with store.engine.connect() as connection:
        devices = connection.execute(text("SELECT count(*) FROM devices")).scalar_one()
    assert devices == 4


def _set_read_only(postgres_url: str, read_only: bool) -> None:
    """Make new transactions of the test database read-only (or not) and end its open sessions."""
    name = make_url(postgres_url).database
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            setting = "on" if read_only else "off"
            connection.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = {setting}'))
            connection.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                {"name": name},
            )
    finally:
        admin.dispose()


def test_postgres_read_only_database_keeps_windows_unacknowledged(
    mqtt_broker: Broker, store: Store, postgres_url: str
) -> None:
    """A database that refuses writes for its state, not the data, loses no window."""
    window = make_window("cam-1", LECTURE_START, {"happy": 4})
    settings = ingest_settings(mqtt_broker, client_id="aggregator-read-only")
    try:
        with running_ingest(store, settings) as ingest:
            _set_read_only(postgres_url, True)
            with publisher(mqtt_broker) as client:
                client.publish_window(window)
            # Two or three retries against the read-only database.
            time.sleep(2.0)
            assert ingest.stats().stored == 0
            assert ingest.stats().rejected == 0
            _set_read_only(postgres_url, False)
            wait_until(lambda: ingest.stats().stored == 1, "the window stored once writes work again", 30.0)
            stats = ingest.stop()
    finally:
        _set_read_only(postgres_url, False)

    assert stats.rejected == 0
    assert store.count_windows("cam-1") == 1


def test_postgres_upgrade_from_0002_and_back() -> None:
    from tests.test_aggregator_store import _alembic, assert_0002_stops_kept, insert_0002_ad_hoc_lectures

    start = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    with fresh_postgres_database("aggregator_upgrade") as url:
        with Store.open(url, upgrade=False) as old:
            _alembic(old, "upgrade", "0002")
            old.insert_windows(
                [received(make_window("cam-1", start + timedelta(seconds=10 * i), {"happy": i})) for i in (1, 0)]
            )
            insert_0002_ad_hoc_lectures(old, start)
        with Store.open(url) as upgraded:
            revision = upgraded.schema_revision()
            assert_0002_stops_kept(upgraded, start)
            windows = upgraded.windows_in_room(ROOM, start, start + timedelta(minutes=1))
            with upgraded.engine.connect() as connection:
                differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
            duplicate = upgraded.insert_windows([received(make_window("cam-1", start, {"happy": 9}))])
            _alembic(upgraded, "downgrade", "0002")
            count_after_downgrade = upgraded.count_windows()
            upgraded.insert_windows([received(make_window("cam-1", start + timedelta(seconds=20), {"sad": 1}))])
            count_after_insert = upgraded.count_windows()

    assert revision == "0003"
    assert differences == []
    assert [window.counts for window in windows] == [{"happy": 0}, {"happy": 1}]
    assert duplicate.duplicates == 1
    assert count_after_downgrade == 2
    # The downgraded table numbers new rows again.
    assert count_after_insert == 3
