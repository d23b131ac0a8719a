"""The publisher drains the outbox through a real broker: cap policy during an outage, in-flight limit, order."""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime, timedelta

from edge_agent.config import MqttConfig
from edge_agent.outbox import Outbox
from edge_agent.payload import WindowReport, parse_window
from edge_agent.publisher import WindowPublisher
from tests.agent_process import Recorder, wait_until
from tests.conftest import free_port, start_mosquitto, stop_mosquitto

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def report(index: int) -> WindowReport:
    return WindowReport(
        device_id="pi-outbox",
        room="101",
        window_start=T0 + timedelta(seconds=10 * index),
        window_end=T0 + timedelta(seconds=10 * index + 10),
        frames_sampled=20,
        faces_seen=5,
        min_faces=5,
        suppressed=False,
        counts={"happy": 5},
    )


def add(outbox: Outbox, index: int) -> None:
    window = report(index)
    outbox.add(window.window_start.isoformat(), window.to_json())


def test_outbox_full_during_outage_keeps_newest(tmp_path, caplog):
    port = free_port()
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_windows=10, when_full="drop_oldest")
    config = MqttConfig(host="127.0.0.1", port=port, connect_timeout_s=0.5, max_inflight=3)
    publisher = WindowPublisher(config, "pi-outbox", outbox)
    publisher.start("active")
    assert not publisher.connected
    with caplog.at_level("WARNING"):
        for index in range(15):
            add(outbox, index)
            publisher.wake()
    assert outbox.depth == 10
    assert outbox.dropped_total == 5
    assert caplog.text.count("Outbox full (10 windows): dropped the oldest pending window") == 5

    broker = start_mosquitto(tmp_path, port)
    recorder = Recorder("127.0.0.1", port, "classroom/pi-outbox/window").start()
    try:
        wait_until(lambda: outbox.depth == 0, 30, "the outbox to drain")
        wait_until(lambda: len(recorder.payloads("window")) == 10, 10, "ten windows at the subscriber")
        result = publisher.close(drain_timeout_s=2)
    finally:
        recorder.stop()
        stop_mosquitto(broker)
    starts = [parse_window(payload).window_start for payload in recorder.payloads("window")]
    assert starts == [report(index).window_start for index in range(5, 15)]
    assert result.acknowledged == 10


def test_outbox_full_drop_newest_keeps_oldest(tmp_path):
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_windows=10, when_full="drop_newest")
    for index in range(15):
        add(outbox, index)
    starts = [json.loads(entry.payload)["window_start"] for entry in outbox.pending()]
    assert starts[0].startswith("2026-03-02T08:00:00")
    assert starts[-1].startswith("2026-03-02T08:01:30")


def test_publisher_hands_at_most_max_inflight(tmp_path, mqtt_broker):
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_windows=100)
    config = MqttConfig(host="127.0.0.1", port=mqtt_broker.port, max_inflight=4)
    publisher = WindowPublisher(config, "pi-outbox", outbox)
    publisher.start("active")
    assert publisher.connected
    # A stopped broker sends no PUBACK, so handed windows stay in flight.
    mqtt_broker.process.send_signal(signal.SIGSTOP)
    try:
        for index in range(30):
            add(outbox, index)
        publisher.wake()
        wait_until(lambda: len(publisher._inflight) == 4, 10, "four windows in flight")
        time.sleep(0.5)
        assert len(publisher._inflight) == 4
        assert outbox.depth == 30
    finally:
        mqtt_broker.process.send_signal(signal.SIGCONT)
    wait_until(lambda: outbox.depth == 0, 30, "the outbox to drain")
    assert publisher.close().acknowledged == 30
