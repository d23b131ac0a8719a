"""The database writer thread of the ingest: batches windows, stores them, then acknowledges.

Messages arrive in a bounded queue in the order the broker delivered them. One thread
takes up to ``max_rows`` of them, or what arrived within ``max_delay_s`` of the first,
stores the valid windows in one transaction and only then calls ``acknowledge`` with
the whole batch in arrival order. A window that was acknowledged is therefore committed.
A window whose commit failed is never acknowledged, so the broker delivers it again
after the next connect.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from aggregator.devices import DeviceEvent
from aggregator.errors import StoreError
from aggregator.rejections import RejectionLog, RejectReason
from aggregator.store import InsertResult, ReceivedWindow, Store

log = logging.getLogger(__name__)

# Waits between attempts to store a batch while the database is unavailable, in seconds.
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One message taken from MQTT, with what the broker needs to acknowledge it.

    ``window`` is set for a valid window and ``device_event`` for a valid status or
    stats message. A rejected message has neither and is only acknowledged.
    ``connection`` numbers the broker connection it arrived on, because it is
    acknowledged only on that connection.
    """

    topic: str
    mid: int
    qos: int
    connection: int
    window: ReceivedWindow | None
    device_event: DeviceEvent | None = None


_Result = TypeVar("_Result")


_STOP = object()


class BatchWriter:
    """Stores inbound windows in batches on its own thread and acknowledges them after commit."""

    def __init__(
        self,
        store: Store,
        acknowledge: Callable[[Sequence[InboundMessage]], None],
        rejections: RejectionLog,
        *,
        max_rows: int = 2000,
        max_delay_s: float = 0.2,
        queue_size: int = 4000,
    ) -> None:
        self._store = store
        self._acknowledge = acknowledge
        self._rejections = rejections
        self._max_rows = max_rows
        self._max_delay_s = max_delay_s
        self._queue: queue.Queue[InboundMessage | object] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="aggregator-writer", daemon=True)
        self._stopping = threading.Event()
        self._finished = threading.Event()
        self._lock = threading.Lock()
        self._stored = 0
        self._duplicates = 0
        self._unstored = 0
        self.failure: str | None = None

    def start(self) -> None:
        self._thread.start()

    def put(self, message: InboundMessage) -> bool:
        """Queue a message, blocking while the queue is full. Return False once the writer has stopped.

        A message that is not queued is not acknowledged either, so the broker delivers it
        again at the next connect.
        """
        while not self._finished.is_set():
            try:
                self._queue.put(message, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def stop(self, timeout_s: float = 60.0) -> bool:
        """Store and acknowledge everything queued so far, then end the thread.

        Return True when the thread ended in time and every queued window was stored.
        """
        self._stopping.set()
        # The writer takes items until it meets _STOP, so a full queue drains unless the writer has ended.
        while self._thread.is_alive() and not self._finished.is_set():
            try:
                self._queue.put(_STOP, timeout=0.5)
                break
            except queue.Full:
                continue
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        return not self._thread.is_alive() and self.failure is None

    @property
    def stored(self) -> int:
        with self._lock:
            return self._stored

    @property
    def duplicates(self) -> int:
        with self._lock:
            return self._duplicates

    @property
    def unstored(self) -> int:
        """Windows given up on at stop because the database failed; the broker redelivers them later."""
        with self._lock:
            return self._unstored

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        try:
            while True:
                batch, stop_requested = self._take_batch()
                if batch and not self._flush(batch):
                    return
                if stop_requested:
                    return
        except Exception as error:
            # A bug must not leave the MQTT thread blocked on a full queue: record it and end.
            log.exception("The database writer failed; nothing more is stored or acknowledged")
            self.failure = f"database writer failed: {error}"
        finally:
            self._finished.set()

    def _take_batch(self) -> tuple[list[InboundMessage], bool]:
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch: list[InboundMessage] = [first]  # type: ignore[list-item]
        deadline_s = time.monotonic() + self._max_delay_s
        while len(batch) < self._max_rows:
            remaining_s = deadline_s - time.monotonic()
            if remaining_s <= 0:
                break
            try:
                item = self._queue.get(timeout=remaining_s)
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)  # type: ignore[arg-type]
        return batch, False

    def _flush(self, batch: list[InboundMessage]) -> bool:
        """Store the batch and acknowledge it. Return False when the writer must end."""
        accepted = [message for message in batch if message.window is not None]
        if accepted:
            outcome = self._store_messages(accepted)
            if outcome is None:
                with self._lock:
                    self._unstored += len(accepted)
                return False
            with self._lock:
                self._stored += outcome.stored
                self._duplicates += outcome.duplicates
        events = [message.device_event for message in batch if message.device_event is not None]
        if events and not self._store_device_events(events):
            return False
        self._acknowledge(batch)
        return True

    def _store_device_events(self, events: list[DeviceEvent]) -> bool:
        """Store status and stats messages. Return False after giving up at stop."""
        try:
            stored = self._with_retry(lambda: self._store.record_device_events(events) or True, len(events))
        except StoreError as error:
            for event in events:
                self._rejections.record(RejectReason.DATABASE_REJECTED, event.device_id, str(error))
            return True
        return stored is not None

    def _store_messages(self, messages: list[InboundMessage]) -> _StoreOutcome | None:
        """Store the windows of the messages. Return None after giving up at stop."""
        windows = [message.window for message in messages if message.window is not None]
        try:
            result = self._insert_with_retry(windows)
        except StoreError as error:
            log.warning(
                "Storing a batch of %d windows failed (%s); storing them one by one", len(windows), error
            )
            return self._store_one_by_one(messages)
        if result is None:
            return None
        return _StoreOutcome(stored=result.stored, duplicates=result.duplicates)

    def _store_one_by_one(self, messages: list[InboundMessage]) -> _StoreOutcome | None:
        """Store each window in its own transaction, so a window that the database rejects is only
        counted and acknowledged."""
        stored = 0
        duplicates = 0
        for message in messages:
            assert message.window is not None
            try:
                result = self._insert_with_retry([message.window])
            except StoreError as error:
                self._rejections.record(RejectReason.DATABASE_REJECTED, message.topic, str(error))
                continue
            if result is None:
                return None
            stored += result.stored
            duplicates += result.duplicates
        return _StoreOutcome(stored=stored, duplicates=duplicates)

    def _insert_with_retry(self, windows: list[ReceivedWindow]) -> InsertResult | None:
        """Insert the windows, retrying while the database is unavailable.

        Return None when the database still fails after a stop was requested.

        Raises:
            StoreError: the database rejected the data, so a retry cannot succeed.
        """
        return self._with_retry(lambda: self._store.insert_windows(windows), len(windows))

    def _with_retry(self, action: Callable[[], _Result], message_count: int) -> _Result | None:
        """Run a store action, retrying while the database is unavailable; None after giving up at stop."""
        attempt = 0
        while True:
            try:
                return action()
            except StoreError as error:
                if not error.retryable:
                    raise
                if self._stopping.is_set() and attempt > 0:
                    self.failure = f"stopped with {message_count} messages not stored: {error}"
                    log.error(
                        "Giving up on %d messages at stop because the database still fails: %s. "
                        "They were not acknowledged, so the broker delivers them again at the next start",
                        message_count,
                        error,
                    )
                    return None
                delay_s = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
                log.error("%s; retrying in %.1f s (attempt %d)", error, delay_s, attempt + 1)
                self._stopping.wait(delay_s)
                attempt += 1


@dataclass(frozen=True, slots=True)
class _StoreOutcome:
    """Windows stored and duplicates skipped by one flush; database rejections are counted apart."""

    stored: int
    duplicates: int
