"""Counting and rate-limited logging of rejected MQTT messages.

A misconfigured agent can publish an invalid payload every few seconds for days, so
the log gets at most one WARNING per reason and interval. That line includes the
number of rejections with the same reason that were not logged since the previous line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

log = logging.getLogger(__name__)


class RejectReason(StrEnum):
    """Reason for rejecting a message. The values appear in logs and statistics."""

    TOO_LARGE = "too_large"
    NOT_JSON = "not_json"
    SCHEMA_VERSION = "schema_version"
    INVALID_FIELDS = "invalid_fields"
    TOPIC_MISMATCH = "topic_mismatch"
    INVALID_DEVICE_MESSAGE = "invalid_device_message"
    DATABASE_REJECTED = "database_rejected"


@dataclass
class _ReasonState:
    total: int = 0
    unlogged: int = 0
    last_logged_s: float | None = None


class RejectionLog:
    """Counts rejections per reason and logs at most one WARNING per reason every ``interval_s``.

    Thread-safe: the MQTT network thread and the database writer both record rejections.
    """

    def __init__(self, interval_s: float = 60.0, clock_s: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock_s = clock_s
        self._lock = threading.Lock()
        self._states: dict[RejectReason, _ReasonState] = {}

    def record(self, reason: RejectReason, topic: str, detail: str) -> None:
        """Count one rejected message, and log it unless its reason was logged within ``interval_s``."""
        now_s = self._clock_s()
        with self._lock:
            state = self._states.setdefault(reason, _ReasonState())
            state.total += 1
            due = state.last_logged_s is None or now_s - state.last_logged_s >= self._interval_s
            if not due:
                state.unlogged += 1
                return
            skipped = state.unlogged
            state.unlogged = 0
            state.last_logged_s = now_s
        if skipped:
            log.warning(
                "Rejected message on topic %s (%s): %s [%d more with this reason since the last report]",
                topic,
                reason.value,
                detail,
                skipped,
            )
        else:
            log.warning("Rejected message on topic %s (%s): %s", topic, reason.value, detail)

    def totals(self) -> dict[str, int]:
        """Return the number of rejections per reason value, only for reasons that occurred."""
        with self._lock:
            return {reason.value: state.total for reason, state in sorted(self._states.items())}

    @property
    def total(self) -> int:
        with self._lock:
            return sum(state.total for state in self._states.values())
