"""The SQLite outbox: durability across reopen, cap policies, state, and a corrupt file."""

from __future__ import annotations

import sqlite3

import pytest

from edge_agent.errors import OutboxError
from edge_agent.outbox import Outbox


def fill(outbox: Outbox, count: int, first: int = 0) -> None:
    for index in range(first, first + count):
        outbox.add(f"2026-03-02T08:00:{index:02d}Z", f'{{"n":{index}}}'.encode())


def test_outbox_uses_wal(tmp_path):
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_windows=10)
    outbox.close()
    with sqlite3.connect(tmp_path / "outbox.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_outbox_survives_reopen(tmp_path):
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_windows=10)
    fill(outbox, 3)
    first = outbox.pending()[0]
    assert outbox.remove(first.row_id)
    outbox.close()

    reopened = Outbox(tmp_path / "outbox.sqlite3", max_windows=10)
    assert reopened.depth == 2
    assert [entry.payload for entry in reopened.pending()] == [b'{"n":1}', b'{"n":2}']


def test_pending_pages_by_row_id(tmp_path):
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_windows=10)
    fill(outbox, 5)
    first_two = outbox.pending(limit=2)
    rest = outbox.pending(after_row_id=first_two[-1].row_id)
    assert [entry.payload for entry in first_two + rest] == [f'{{"n":{n}}}'.encode() for n in range(5)]


def test_full_drops_oldest(tmp_path):
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_windows=10, when_full="drop_oldest")
    fill(outbox, 10)
    result = outbox.add("2026-03-02T08:01:00Z", b'{"n":10}')
    assert result.row_id is not None
    assert result.dropped == 1
    assert outbox.depth == 10
    assert outbox.dropped_total == 1
    payloads = [entry.payload for entry in outbox.pending()]
    assert payloads[0] == b'{"n":1}'
    assert payloads[-1] == b'{"n":10}'


def test_full_drops_newest(tmp_path):
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_windows=10, when_full="drop_newest")
    fill(outbox, 12)
    assert outbox.depth == 10
    assert outbox.dropped_total == 2
    assert outbox.pending()[-1].payload == b'{"n":9}'


def test_drop_count_survives_reopen(tmp_path, caplog):
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_windows=10)
    with caplog.at_level("WARNING"):
        fill(outbox, 11)
    assert "Outbox full (10 windows): dropped the oldest pending window 2026-03-02T08:00:00Z" in caplog.text
    outbox.close()
    assert Outbox(tmp_path / "outbox.sqlite3", max_windows=10).dropped_total == 1


def test_remove_of_dropped_row(tmp_path):
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_windows=10)
    fill(outbox, 1)
    row_id = outbox.pending()[0].row_id
    assert outbox.remove(row_id)
    assert not outbox.remove(row_id)
    assert outbox.depth == 0


def test_state_survives_reopen(tmp_path):
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_windows=10)
    assert outbox.get_state("counting") is None
    outbox.set_state("counting", "paused")
    outbox.set_state("counting", "active")
    outbox.close()
    assert Outbox(tmp_path / "outbox.sqlite3", max_windows=10).get_state("counting") == "active"


def test_corrupt_file_names_path_and_fix(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match="outbox.sqlite3.*move it aside"):
        Outbox(path, max_windows=10)


def test_foreign_database_is_refused_and_left_unchanged(tmp_path):
    path = tmp_path / "aggregator.db"
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE windows (id INTEGER PRIMARY KEY, device_id TEXT)")
        other.execute("CREATE TABLE lectures (id INTEGER PRIMARY KEY)")
    before = path.read_bytes()
    with pytest.raises(OutboxError, match="is not an edge agent outbox .it has the tables lectures.; it was left unchanged"):
        Outbox(path, max_windows=10)
    assert path.read_bytes() == before
    assert not (tmp_path / "aggregator.db-wal").exists()


def test_windows_table_of_another_shape_is_refused(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE windows (id INTEGER PRIMARY KEY, device_id TEXT)")
    with pytest.raises(OutboxError, match="its windows table has the columns device_id, id"):
        Outbox(path, max_windows=10)
