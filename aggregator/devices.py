"""Devices: which agents the aggregator has heard from, their MQTT status and latest statistics.

Four topics of each agent update its row:

- ``{prefix}/{device_id}/window``: every stored batch moves ``last_seen`` and
  ``last_window_end`` forward (never back, so a redelivered old window changes nothing).
- ``{prefix}/{device_id}/status``: retained text ``online``, ``offline`` (the agent's
  last will) or ``stopped``.
- ``{prefix}/{device_id}/counting``: retained text ``active`` or ``paused`` (counting
  paused by a command, for a break).
- ``{prefix}/{device_id}/stats``: the agent's latest statistics. Their JSON fields are
  not fixed yet, so the payload is stored as received (when it is a JSON object) and
  read only defensively.

A device is *silent* when its status is ``offline``, or when nothing arrived from it
for ``silent_after_s``. The retained copies that the broker sends when an aggregator
subscribes update status, counting and stats, but not ``last_seen``: they may be old.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, case, or_, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from aggregator.errors import ConfigError
from aggregator.models import DeviceRow

if TYPE_CHECKING:
    from aggregator.store import ReceivedWindow, Store

DEVICE_STATUSES = ("online", "offline", "stopped")
COUNTING_STATES = ("active", "paused")
MAX_STATS_BYTES = 16 * 1024
DEFAULT_SILENT_AFTER_S = 120
# Any device quiet for a year is silent, and the bound keeps the timedelta in
# ``Device.silent`` far from overflowing.
MAX_SILENT_AFTER_S = 366 * 24 * 3600


class DeviceTopic(StrEnum):
    """Topics of an agent besides its windows."""

    STATUS = "status"
    COUNTING = "counting"
    STATS = "stats"


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """A validated status or stats message of one device.

    ``text`` is one of DEVICE_STATUSES for STATUS, one of COUNTING_STATES for COUNTING, and
    a JSON object's text for STATS. ``retained`` marks a stored copy that the broker sent
    for a new subscription: it may be days old, so it does not move ``last_seen``.
    """

    device_id: str
    topic: DeviceTopic
    text: str
    received_at: datetime
    retained: bool = False


@dataclass(frozen=True, slots=True)
class Device:
    """One row of the devices table. Times are UTC."""

    device_id: str
    room: str | None
    first_seen: datetime
    last_seen: datetime
    last_window_end: datetime | None
    status: str | None
    status_at: datetime | None
    stats_json: str | None
    stats_at: datetime | None
    counting: str | None = None
    counting_at: datetime | None = None

    def stats(self) -> dict[str, Any]:
        """Return the latest stats payload as a dict, or an empty dict when there is none."""
        if not self.stats_json:
            return {}
        try:
            data = json.loads(self.stats_json)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def silent(self, now: datetime, silent_after_s: float = DEFAULT_SILENT_AFTER_S) -> bool:
        """Return True when the device's last will fired or nothing arrived for ``silent_after_s``.

        Raises:
            ConfigError: ``silent_after_s`` is out of range (see ``check_silent_after_s``).
        """
        check_silent_after_s(silent_after_s)
        return self.status == "offline" or now - self.last_seen > timedelta(seconds=silent_after_s)


def check_silent_after_s(seconds: float, name: str = "silent_after_s") -> None:
    """Check that ``seconds`` is a finite time above 0 and at most MAX_SILENT_AFTER_S.

    Raises:
        ConfigError: naming ``name`` and the value.
    """
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_SILENT_AFTER_S):
        raise ConfigError(
            f"Invalid {name} {seconds:.15g}: use a number of seconds above 0 and at most "
            f"{MAX_SILENT_AFTER_S} (366 days)"
        )


def parse_status(payload: bytes) -> str:
    """Return the status text of a status payload.

    Raises:
        ValueError: the payload is not one of DEVICE_STATUSES.
    """
    return _parse_word(payload, "status", DEVICE_STATUSES)


def parse_counting(payload: bytes) -> str:
    """Return the counting state of a counting payload.

    Raises:
        ValueError: the payload is not one of COUNTING_STATES.
    """
    return _parse_word(payload, "counting", COUNTING_STATES)


def parse_device_message(topic: DeviceTopic, payload: bytes) -> str:
    """Return the text to store of a message on one of the device topics.

    Raises:
        ValueError: the payload is not valid for its topic.
    """
    parsers = {DeviceTopic.STATUS: parse_status, DeviceTopic.COUNTING: parse_counting, DeviceTopic.STATS: parse_stats}
    return parsers[topic](payload)


def _parse_word(payload: bytes, topic: str, allowed: tuple[str, ...]) -> str:
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{topic} payload is not UTF-8 text") from None
    if text not in allowed:
        raise ValueError(f"{topic} {text[:40]!r} is not one of {', '.join(allowed)}")
    return text


def parse_stats(payload: bytes) -> str:
    """Return the text of a stats payload after checking that it is one JSON object.

    Raises:
        ValueError: the payload is too large or not a JSON object.
    """
    if len(payload) > MAX_STATS_BYTES:
        raise ValueError(f"stats payload is {len(payload)} bytes, the limit is {MAX_STATS_BYTES}")
    try:
        text = payload.decode("utf-8")
        data = json.loads(text)
    except ValueError as error:
        raise ValueError(f"stats payload is not UTF-8 JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"stats payload must be a JSON object, got {type(data).__name__}")
    return text


def upsert_window_devices(connection: Connection, windows: Sequence[ReceivedWindow]) -> None:
    """Create or move forward the device rows of the windows, in the caller's transaction."""
    latest: dict[str, dict[str, Any]] = {}
    for window in windows:
        report = window.report
        row = latest.get(report.device_id)
        if row is None:
            latest[report.device_id] = {
                "device_id": report.device_id,
                "room": report.room,
                "first_seen": window.received_at,
                "last_seen": window.received_at,
                "last_window_end": report.window_end,
            }
            continue
        row["last_seen"] = max(row["last_seen"], window.received_at)
        if report.window_end >= row["last_window_end"]:
            row["last_window_end"] = report.window_end
            row["room"] = report.room
    # Sorted rows take their row locks in one order, which avoids deadlocks between two
    # aggregators that upsert the same devices on PostgreSQL.
    rows = [latest[device_id] for device_id in sorted(latest)]
    if not rows:
        return
    table = DeviceRow.__table__
    statement = _insert(connection)(table)
    excluded = statement.excluded
    # A status or stats message may have created the row without any window yet.
    newer_window = or_(table.c.last_window_end.is_(None), excluded.last_window_end > table.c.last_window_end)
    statement = statement.on_conflict_do_update(
        index_elements=["device_id"],
        set_={
            "last_seen": case((excluded.last_seen > table.c.last_seen, excluded.last_seen), else_=table.c.last_seen),
            "last_window_end": case((newer_window, excluded.last_window_end), else_=table.c.last_window_end),
            "room": case((newer_window, excluded.room), else_=table.c.room),
        },
    )
    connection.execute(statement, rows)


def upsert_device_events(connection: Connection, events: Sequence[DeviceEvent]) -> None:
    """Store status and stats events in the caller's transaction, keeping the newest of each."""
    table = DeviceRow.__table__
    for event in sorted(events, key=lambda item: (item.device_id, item.received_at)):
        if event.topic is DeviceTopic.STATUS:
            values = {"status": event.text, "status_at": event.received_at}
        elif event.topic is DeviceTopic.COUNTING:
            values = {"counting": event.text, "counting_at": event.received_at}
        else:
            values = {"stats_json": event.text, "stats_at": event.received_at}
        statement = _insert(connection)(table).values(
            device_id=event.device_id,
            first_seen=event.received_at,
            last_seen=event.received_at,
            **values,
        )
        excluded = statement.excluded
        updates: dict[str, Any] = {column: getattr(excluded, column) for column in values}
        # A device first heard of through a retained copy counts as seen when it arrived.
        if not event.retained:
            updates["last_seen"] = case(
                (excluded.last_seen > table.c.last_seen, excluded.last_seen), else_=table.c.last_seen
            )
        connection.execute(statement.on_conflict_do_update(index_elements=["device_id"], set_=updates))


def list_devices(store: Store) -> list[Device]:
    """Return every device, ordered by id."""
    query = select(DeviceRow).order_by(DeviceRow.device_id)
    with store.engine.connect() as connection:
        return [_device(row) for row in connection.execute(query).mappings()]


def _insert(connection: Connection) -> Any:
    return sqlite_insert if connection.dialect.name == "sqlite" else postgresql_insert


def _device(row: Any) -> Device:
    return Device(
        device_id=row["device_id"],
        room=row["room"],
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        last_window_end=row["last_window_end"],
        status=row["status"],
        status_at=row["status_at"],
        stats_json=row["stats_json"],
        stats_at=row["stats_at"],
        counting=row["counting"],
        counting_at=row["counting_at"],
    )
