"""Durable outbox: finished windows wait in SQLite until the broker acknowledges them.

The agent adds each window here before it publishes it, and removes it only when the
PUBACK for it arrives, so a broker outage, a network outage or a crash of the agent
loses nothing that was added. The file uses WAL mode with ``synchronous=FULL``: a
window is on disk when ``add`` returns, even if power fails right after.

Cap policy: the outbox keeps at most ``max_windows`` rows. When it is full,
``drop_oldest`` deletes the oldest pending window to make room for the new one, and
``drop_newest`` discards the new one. Each dropped window is counted in a counter that
survives restarts and is logged with its window start.

The outbox also stores small pieces of agent state that must survive a restart, such
as whether counting is paused. It holds only window payloads (counts), never pixels.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edge_agent.errors import OutboxError

log = logging.getLogger(__name__)

# SQLite's page cache is the only part of the outbox held in RAM (the rows stay on disk),
# so the RAM budget counts this many KiB for it.
PAGE_CACHE_KIB = 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    window_start TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

OUTBOX_TABLES = {"windows", "counters", "state"}


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One pending window: its row id and the JSON payload to publish."""

    row_id: int
    window_start: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class AddResult:
    """Outcome of ``Outbox.add``: the new row (None when the window was dropped) and windows dropped for it."""

    row_id: int | None
    dropped: int


class Outbox:
    """SQLite WAL queue of window payloads, safe to use from several threads."""

    def __init__(
        self, path: Path, max_windows: int, when_full: Literal["drop_oldest", "drop_newest"] = "drop_oldest"
    ) -> None:
        self.path = Path(path)
        self.max_windows = max_windows
        self.when_full = when_full
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: autocommit, with explicit BEGIN where several statements belong together.
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            foreign = self._foreign_schema()
            if foreign:
                self._db.close()
                raise OutboxError(
                    f"{self.path} is not an edge agent outbox ({foreign}); it was left unchanged. "
                    "Give the outbox a file of its own: [outbox] path in the config or --outbox."
                )
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
            self._db.executescript(_SCHEMA)
            self._depth = self._db.execute("SELECT COUNT(*) FROM windows").fetchone()[0]
        except (sqlite3.Error, OSError) as error:
            raise OutboxError(
                f"Cannot open the outbox {self.path}: {error}. Check that its directory is writable; if the file "
                "is corrupt, move it aside (its pending windows are then lost) and start again."
            ) from None
        if mode.lower() != "wal":
            log.warning("Outbox %s runs in %s journal mode, not WAL: the file system may not support WAL", self.path, mode)
        if self._depth:
            log.info("Outbox %s contains %d window(s) from an earlier run; they are sent first", self.path, self._depth)

    def _foreign_schema(self) -> str:
        """Describe what in an existing database file is not the outbox's schema, or return ""."""
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        other = sorted(tables - OUTBOX_TABLES - {"sqlite_sequence"})
        if other:
            return f"it has the tables {', '.join(other)}"
        if "windows" in tables:
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(windows)")}
            if not {"id", "window_start", "payload"} <= columns:
                return f"its windows table has the columns {', '.join(sorted(columns))}"
        return ""

    def add(self, window_start: str, payload: bytes) -> AddResult:
        """Store one window durably, applying the cap policy when the outbox is full."""
        with self._lock, self._transaction():
            dropped = 0
            if self._depth >= self.max_windows:
                if self.when_full == "drop_newest":
                    self._count("dropped", 1)
                    log.warning(
                        "Outbox full (%d windows): dropped the new window %s (policy drop_newest)",
                        self._depth,
                        window_start,
                    )
                    return AddResult(None, 1)
                excess = self._depth - self.max_windows + 1
                oldest = self._db.execute(
                    "SELECT id, window_start FROM windows ORDER BY id LIMIT ?", (excess,)
                ).fetchall()
                self._db.executemany("DELETE FROM windows WHERE id = ?", [(row[0],) for row in oldest])
                dropped = len(oldest)
                self._depth -= dropped
                self._count("dropped", dropped)
                log.warning(
                    "Outbox full (%d windows): dropped the oldest pending window %s (policy drop_oldest)",
                    self.max_windows,
                    oldest[0][1],
                )
            cursor = self._db.execute(
                "INSERT INTO windows (window_start, payload) VALUES (?, ?)", (window_start, payload)
            )
            self._depth += 1
            return AddResult(cursor.lastrowid, dropped)

    def pending(self, after_row_id: int = 0, limit: int = 100) -> list[OutboxEntry]:
        """Return up to ``limit`` pending windows with a row id above ``after_row_id``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, window_start, payload FROM windows WHERE id > ? ORDER BY id LIMIT ?",
                (after_row_id, limit),
            ).fetchall()
        return [OutboxEntry(row_id, window_start, bytes(payload)) for row_id, window_start, payload in rows]

    def remove(self, row_id: int) -> bool:
        """Delete an acknowledged window; return False when it was already gone (dropped by the cap)."""
        with self._lock:
            deleted = self._db.execute("DELETE FROM windows WHERE id = ?", (row_id,)).rowcount
            self._depth -= deleted
            return deleted == 1

    @property
    def depth(self) -> int:
        """Number of windows waiting for a PUBACK."""
        return self._depth

    @property
    def dropped_total(self) -> int:
        """Windows dropped by the cap policy since the outbox file was created."""
        return self.counter("dropped")

    def counter(self, name: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    def get_state(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_state(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _count(self, name: str, amount: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, amount),
        )

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK when the block raises."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, error_type: object, error: object, traceback: object) -> None:
        self._db.execute("ROLLBACK" if error_type else "COMMIT")
