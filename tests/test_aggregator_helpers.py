"""Helpers shared by the aggregator tests: window builders, an MQTT publisher, a known lecture.

This module contains no tests. Its name matches the test file pattern only so that it
belongs with the other aggregator test modules.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from aggregator.ingest import Ingest, IngestSettings
from aggregator.report import LabelShare, LectureReport, StepStatus
from aggregator.store import Lecture, ReceivedWindow, Store
from edge_agent.payload import WindowReport, window_topic
from tests.conftest import Broker

ROOM = "B-101"
PREFIX = "classroom"
WAIT_S = 20.0


def make_window(
    device_id: str,
    start: datetime,
    counts: dict[str, int] | None = None,
    *,
    room: str = ROOM,
    length_s: float = 10.0,
    faces_seen: int | None = None,
    frames_sampled: int = 20,
    min_faces: int = 5,
) -> WindowReport:
    """Build a window; ``counts=None`` makes it suppressed with ``faces_seen`` detections."""
    suppressed = counts is None
    if faces_seen is None:
        faces_seen = 0 if suppressed else sum(counts.values())
    return WindowReport(
        device_id=device_id,
        room=room,
        window_start=start,
        window_end=start + timedelta(seconds=length_s),
        frames_sampled=frames_sampled,
        faces_seen=faces_seen,
        min_faces=min_faces,
        suppressed=suppressed,
        counts=counts,
    )


def received(report: WindowReport) -> ReceivedWindow:
    return ReceivedWindow(report=report, received_at=datetime.now(UTC))


def wait_until(condition: Callable[[], bool], description: str, timeout_s: float = WAIT_S) -> None:
    """Poll ``condition`` until it is true; fail with ``description`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for: {description}")


class Publisher:
    """A paho MQTT 5 client that publishes at QoS 1 and waits for each PUBACK."""

    def __init__(self, broker: Broker, client_id: str = "test-publisher") -> None:
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()

    def publish_window(self, report: WindowReport, topic: str | None = None) -> None:
        self.publish_bytes(topic or window_topic(PREFIX, report.device_id), report.to_json())

    def publish_bytes(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(WAIT_S)
        assert info.is_published(), f"no PUBACK for {topic} within {WAIT_S} s"

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@contextmanager
def publisher(broker: Broker) -> Iterator[Publisher]:
    client = Publisher(broker)
    try:
        yield client
    finally:
        client.close()


def ingest_settings(
    broker: Broker, client_id: str = "aggregator-test", **overrides: object
) -> IngestSettings:
    return IngestSettings(
        host=broker.host, port=broker.port, topic_prefix=PREFIX, client_id=client_id, **overrides
    )


@contextmanager
def running_ingest(store: Store, settings: IngestSettings) -> Iterator[Ingest]:
    """Start an ingest and stop it on exit, also when the test fails."""
    ingest = Ingest(store, settings)
    ingest.start()
    try:
        yield ingest
    finally:
        ingest.stop()


# A five-minute lecture with hand-computed results, checked by assert_known_report.
LECTURE_START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
LECTURE_END = LECTURE_START + timedelta(minutes=5)


def at(minutes: int, seconds: int = 0) -> datetime:
    return LECTURE_START + timedelta(minutes=minutes, seconds=seconds)


def known_lecture_windows() -> list[WindowReport]:
    """Windows of two devices, whose report values assert_known_report checks.

    - 08:00  cam-1 happy 6 neutral 2; cam-2 happy 1 neutral 5 sad 2
    - 08:01  cam-1 and cam-2 suppressed (3 and 2 detections)
    - 08:02  nothing
    - 08:03  cam-1 happy 1 neutral 9; cam-2 suppressed (4 detections)
    - 08:04  cam-1 angry 2 bored 3 neutral 1
    - outside the lecture: one before, one at its end, one in another room
    """
    return [
        make_window("cam-1", at(0), {"happy": 6, "neutral": 2, "sad": 0}),
        make_window("cam-2", at(0), {"happy": 1, "neutral": 5, "sad": 2}),
        make_window("cam-1", at(1), faces_seen=3),
        make_window("cam-2", at(1, 10), faces_seen=2),
        make_window("cam-1", at(3, 30), {"happy": 1, "neutral": 9}),
        make_window("cam-2", at(3, 50), faces_seen=4),
        make_window("cam-1", at(4, 50), {"angry": 2, "bored": 3, "neutral": 1}),
        make_window("cam-1", at(0, -10), {"fear": 7}),
        make_window("cam-1", at(5), {"fear": 7}),
        make_window("cam-9", at(2), {"fear": 7}, room="C-202"),
    ]


def known_lecture(lecture_id: int = 1) -> Lecture:
    return Lecture(id=lecture_id, room=ROOM, title="Linear Algebra", start=LECTURE_START, end=LECTURE_END)


def assert_known_report(report: LectureReport) -> None:
    """Check every number of the known lecture, worked out by hand from known_lecture_windows()."""
    assert report.labels == ("angry", "happy", "sad", "neutral", "bored")

    coverage = report.coverage
    assert coverage.windows_received == 7
    # 300 s lecture, 10 s windows, two devices seen: 2 * 30.
    assert coverage.windows_expected == 60
    assert coverage.percent == pytest.approx(100 * 7 / 60)
    assert coverage.suppressed_windows == 3
    assert coverage.frames_sampled == 140
    assert coverage.face_detections == 41
    assert coverage.classified_faces == 32
    assert [
        (d.device_id, d.window_s, d.windows_received, d.windows_expected, d.suppressed_windows)
        for d in coverage.devices
    ] == [("cam-1", 10.0, 4, 30, 1), ("cam-2", 10.0, 3, 30, 2)]

    # Totals: neutral 2+5+9+1 = 17, happy 6+1+1 = 8, bored 3, angry 2, sad 2 (tie: angry first).
    assert report.shares == (
        LabelShare("neutral", 17, 53.125),
        LabelShare("happy", 8, 25.0),
        LabelShare("bored", 3, 9.375),
        LabelShare("angry", 2, 6.25),
        LabelShare("sad", 2, 6.25),
    )

    timeline = report.timeline
    assert [step.start for step in timeline] == [at(minute) for minute in range(5)]
    assert timeline[-1].end == LECTURE_END
    assert [step.status for step in timeline] == [
        StepStatus.DATA,
        StepStatus.SUPPRESSED,
        StepStatus.NO_DATA,
        StepStatus.DATA,
        StepStatus.DATA,
    ]
    assert [step.windows for step in timeline] == [2, 2, 0, 2, 1]
    assert [step.suppressed_windows for step in timeline] == [0, 2, 0, 1, 0]
    assert [step.face_detections for step in timeline] == [16, 5, 0, 14, 6]
    assert [step.classified_faces for step in timeline] == [16, 0, 0, 10, 6]
    # 08:00 happy 7 and neutral 7 tie; happy comes first in the label order.
    assert [step.dominant for step in timeline] == ["happy", None, None, "neutral", "bored"]

    def percents(index: int) -> list[float]:
        return [share.percent for share in timeline[index].shares]

    assert percents(0) == [0.0, 43.75, 12.5, 43.75, 0.0]
    assert timeline[1].shares == ()
    assert timeline[2].shares == ()
    assert percents(3) == [0.0, 10.0, 0.0, 90.0, 0.0]
    assert percents(4) == pytest.approx([100 * 2 / 6, 0.0, 0.0, 100 * 1 / 6, 50.0])


def assert_one_error(err: str, *parts: str) -> None:
    """Assert that the aggregator printed exactly one error line, and that it contains every part."""
    assert err.startswith("aggregator: error: ")
    assert err.count("\n") == 1
    for part in parts:
        assert part in err
