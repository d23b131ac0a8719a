"""The database writer thread of the ingest: batches messages, stores them, then acknowledges.

The MQTT network thread only appends each raw message to a deque, because every
microsecond spent there is a microsecond less for reading the socket. One writer thread
takes up to ``max_rows`` messages, or what arrived within ``max_delay_s`` of the first.
It validates them with the ``prepare`` function it was given and stores the valid
windows and device messages in one transaction each. Only then does it call
``acknowledge`` with the whole batch in arrival order. A window that was acknowledged is
therefore committed. A window whose commit failed is never acknowledged, so the broker
delivers it again after the next connect. A rejected message is acknowledged with its
batch, so the broker does not deliver it again.

The deque needs no bound of its own for QoS 1: the ingest sends the broker a Receive
Maximum of ``queue_size``, so at most that many unacknowledged messages exist, queued or
in the batch being stored. QoS 0 messages (the agents' stats) are not flow-controlled,
so ``put`` waits while the deque contains ``queue_size`` messages.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from aggregator.devices import DeviceEvent
from aggregator.errors import StoreError
from aggregator.rejections import RejectionLog, RejectReason
from aggregator.store import InsertResult, ReceivedWindow, Store

log = logging.getLogger(__name__)

# Waits between attempts to store a batch while the database is unavailable, in seconds.
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# While a batch fills, the writer looks at the deque this often, in seconds.
FILL_POLL_S = 0.002


class InboundMessage(NamedTuple):
    """One message as taken from MQTT, with what the broker needs to acknowledge it.

    ``topic`` is the raw topic, which may not be UTF-8. ``connection`` numbers the broker
    connection the message arrived on, because it is acknowledged only on that
    connection. ``received_at_s`` is the time.time() at which its bytes were read.
    ``retained`` is true for a stored copy that the broker sent for a new subscription,
    which may be much older than its receive time.
    """

    topic: bytes
    payload: bytes
    mid: int
    qos: int
    connection: int
    received_at_s: float
    retained: bool = False


#: Validates one message: returns the window or device event to store, or None after
#: recording why the message is rejected.
Prepare = Callable[[InboundMessage], ReceivedWindow | DeviceEvent | None]

_Result = TypeVar("_Result")


class BatchWriter:
    """Validates, stores and acknowledges inbound messages in batches on its own thread."""

    def __init__(
        self,
        store: Store,
        prepare: Prepare,
        acknowledge: Callable[[Sequence[InboundMessage]], None],
        rejections: RejectionLog,
        *,
        max_rows: int = 2000,
        max_delay_s: float = 0.2,
        queue_size: int = 4000,
    ) -> None:
        self._store = store
        self._prepare = prepare
        self._acknowledge = acknowledge
        self._rejections = rejections
        self._max_rows = max_rows
        self._max_delay_s = max_delay_s
        self._queue_size = queue_size
        # deque.append and popleft are atomic, so the network thread appends without a lock.
        self._inbound: deque[InboundMessage] = deque()
        # Set by put() when the deque goes from empty to not empty, and by stop().
        self._arrived = threading.Event()
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
        """Queue a message. Return False once the writer has stopped.

        Waits while ``queue_size`` messages are queued. A message that is not queued is not
        acknowledged either, so the broker delivers it again at the next connect.
        """
        inbound = self._inbound
        while len(inbound) >= self._queue_size:
            if self._finished.is_set():
                return False
            time.sleep(FILL_POLL_S)
        if self._finished.is_set():
            return False
        inbound.append(message)
        if len(inbound) == 1:
            self._arrived.set()
        return True

    def stop(self, timeout_s: float = 60.0) -> bool:
        """Store and acknowledge everything queued so far, then end the thread.

        Return True when the thread ended in time and every queued window was stored.
        """
        self._stopping.set()
        self._arrived.set()
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
        return len(self._inbound)

    def _run(self) -> None:
        try:
            while True:
                batch = self._take_batch()
                if batch and not self._flush(batch):
                    return
                if not batch and self._stopping.is_set():
                    return
        except Exception as error:
            # A bug must not leave messages unacknowledged while the ingest looks healthy:
            # record it, so that the ingest reports the failure, and end.
            log.exception("The database writer failed; nothing more is stored or acknowledged")
            self.failure = f"database writer failed: {error}"
        finally:
            self._finished.set()

    def _take_batch(self) -> list[InboundMessage]:
        """Wait for a message, then take up to max_rows of them, waiting at most max_delay_s for more.

        Return what is queued at once when a stop was requested, and an empty list when
        nothing is queued then.
        """
        inbound = self._inbound
        while not inbound:
            if self._stopping.is_set():
                return []
            self._arrived.clear()
            if not inbound:
                self._arrived.wait(1.0)
        deadline_s = time.monotonic() + self._max_delay_s
        while len(inbound) < self._max_rows and not self._stopping.is_set():
            remaining_s = deadline_s - time.monotonic()
            if remaining_s <= 0:
                break
            time.sleep(min(remaining_s, FILL_POLL_S))
        count = min(len(inbound), self._max_rows)
        popleft = inbound.popleft
        return [popleft() for _ in range(count)]

    def _flush(self, batch: list[InboundMessage]) -> bool:
        """Validate, store and acknowledge the batch. Return False when the writer must end."""
        windows: list[ReceivedWindow] = []
        events: list[DeviceEvent] = []
        topics: list[bytes] = []
        prepare = self._prepare
        for message in batch:
            try:
                item = prepare(message)
            except Exception as error:
                # A payload that trips a bug in validation must not stop the writer: the broker
                # would deliver the same message again after every restart.
                topic = message.topic.decode("utf-8", "replace")
                log.exception("Validating a message on topic %s failed unexpectedly", topic)
                self._rejections.record(
                    RejectReason.INVALID_FIELDS, topic, f"validation failed unexpectedly: {error!r}"
                )
                continue
            if item is None:
                continue
            if type(item) is ReceivedWindow:
                windows.append(item)
                topics.append(message.topic)
            else:
                events.append(item)  # type: ignore[arg-type]
        if windows:
            outcome = self._store_windows(windows, topics)
            if outcome is None:
                with self._lock:
                    self._unstored += len(windows)
                return False
            with self._lock:
                self._stored += outcome.stored
                self._duplicates += outcome.duplicates
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

    def _store_windows(self, windows: list[ReceivedWindow], topics: list[bytes]) -> _StoreOutcome | None:
        """Store the windows. Return None after giving up at stop."""
        try:
            result = self._insert_with_retry(windows)
        except StoreError as error:
            log.warning(
                "Storing a batch of %d windows failed (%s); storing them one by one", len(windows), error
            )
            return self._store_one_by_one(windows, topics)
        if result is None:
            return None
        return _StoreOutcome(stored=result.stored, duplicates=result.duplicates)

    def _store_one_by_one(self, windows: list[ReceivedWindow], topics: list[bytes]) -> _StoreOutcome | None:
        """Store each window in its own transaction, so a window that the database rejects is only
        counted and acknowledged."""
        stored = 0
        duplicates = 0
        for window, topic in zip(windows, topics, strict=True):
            try:
                result = self._insert_with_retry([window])
            except StoreError as error:
                self._rejections.record(
                    RejectReason.DATABASE_REJECTED, topic.decode("utf-8", "replace"), str(error)
                )
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
