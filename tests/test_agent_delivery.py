"""Windows reach the aggregator exactly once through broker outages, SIGKILL and SIGTERM.

The agent runs as its own process on a real video read as a live stream, against a
private Mosquitto; the aggregator side is the real ``aggregator`` ingest and store.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from aggregator.ingest import Ingest, IngestSettings
from aggregator.store import Store
from edge_agent.stats import parse_stats
from tests.agent_process import (
    DEVICE_ID,
    Recorder,
    outbox_window_starts,
    publish_once,
    start_agent,
    wait_until,
    write_live_config,
)
from tests.conftest import free_port, start_mosquitto, stop_mosquitto

pytestmark = pytest.mark.slow


def persistent_broker(directory, port):
    # Persistence keeps the aggregator's session, and the windows queued for it, across a broker restart.
    data = directory / "mosquitto-data"
    data.mkdir(exist_ok=True)
    # Started as root, mosquitto switches to the mosquitto user unless its config names another, and that
    # user cannot write into pytest's private temporary folder, so nothing would persist.
    # Started as another user, mosquitto ignores the setting.
    return start_mosquitto(directory, port, f"user root\npersistence true\npersistence_location {data}/\n")


def start_ingest(store: Store, port: int) -> Ingest:
    ingest = Ingest(
        store, IngestSettings(host="127.0.0.1", port=port, client_id="aggregator-test", batch_max_delay_s=0.05)
    )
    ingest.start()
    return ingest


def stored_starts(store: Store) -> list[datetime]:
    windows = store.windows_in_room("101", datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    return [window.window_start for window in windows]


def test_broker_outage_loses_nothing(tmp_path):
    port = free_port()
    broker = persistent_broker(tmp_path, port)
    store = Store.open(f"sqlite:///{tmp_path / 'aggregator.db'}")
    ingest = start_ingest(store, port)
    agent = start_agent(write_live_config(tmp_path, port), tmp_path)
    try:
        wait_until(lambda: store.count_windows(DEVICE_ID) >= 2, 60, "windows before the outage", agent)
        stop_mosquitto(broker)
        outbox = tmp_path / "outbox.sqlite3"
        wait_until(lambda: len(outbox_window_starts(outbox)) >= 3, 60, "windows held during the outage", agent)
        held = outbox_window_starts(outbox)

        broker = persistent_broker(tmp_path, port)
        wait_until(lambda: not outbox_window_starts(outbox), 60, "the outbox to drain", agent)
        assert agent.terminate() == 0, agent.log_text()[-3000:]
        summary = json.loads(agent.summary_path.read_text())
        wait_until(
            lambda: store.count_windows(DEVICE_ID) >= summary["windows_published"], 60, "all windows stored"
        )
    finally:
        agent.kill()
        ingest_stats = ingest.stop()
        stop_mosquitto(broker)

    starts = stored_starts(store)
    store.close()
    assert summary["windows_pending"] == 0
    assert len(starts) == summary["windows_published"]
    assert len(set(starts)) == len(starts)
    held_starts = {datetime.fromisoformat(start) for start in held}
    assert held_starts <= set(starts)
    # A duplicate is a window resent because its PUBACK was lost in the outage; the store keeps one.
    assert ingest_stats.stored == len(starts)
    assert "Disconnected from MQTT broker" in agent.log_text()
    assert (tmp_path / "mosquitto-data" / "mosquitto.db").exists()


def test_sigkill_then_restart_resends(tmp_path):
    port = free_port()
    config = write_live_config(tmp_path, port)
    outbox = tmp_path / "outbox.sqlite3"
    first = start_agent(config, tmp_path, "first")
    try:
        # No broker yet: windows pile up in the outbox.
        wait_until(lambda: len(outbox_window_starts(outbox)) >= 3, 60, "windows in the outbox", first)
    finally:
        first.kill()
    pending = outbox_window_starts(outbox)
    assert "unreachable" in first.log_text()

    broker = start_mosquitto(tmp_path, port)
    store = Store.open(f"sqlite:///{tmp_path / 'aggregator.db'}")
    ingest = start_ingest(store, port)
    second = start_agent(config, tmp_path, "second")
    try:
        expected = {datetime.fromisoformat(start) for start in pending}
        wait_until(lambda: expected <= set(stored_starts(store)), 60, "the killed run's windows", second)
        assert second.terminate() == 0, second.log_text()[-3000:]
    finally:
        second.kill()
        ingest.stop()
        stop_mosquitto(broker)
    starts = stored_starts(store)
    store.close()
    assert len(set(starts)) == len(starts)
    assert f"Outbox {outbox} contains {len(pending)} window(s) from an earlier run" in second.log_text()


def test_status_stats_pause_and_sigterm(tmp_path, mqtt_broker):
    recorder = Recorder(mqtt_broker.host, mqtt_broker.port, f"classroom/{DEVICE_ID}/#").start()
    agent = start_agent(write_live_config(tmp_path, mqtt_broker.port), tmp_path)
    try:
        wait_until(lambda: b"online" in recorder.payloads("status"), 60, "status online", agent)
        wait_until(lambda: len(recorder.payloads("stats")) >= 2, 30, "two stats messages", agent)
        stats = parse_stats(recorder.payloads("stats")[-1])
        assert stats.device_id == DEVICE_ID
        assert stats.budget_mib == 1024
        assert stats.rss_mib > 0
        assert stats.counting == "active"

        publish_once(mqtt_broker.host, mqtt_broker.port, f"classroom/{DEVICE_ID}/command", "pause")
        wait_until(lambda: b"paused" in recorder.payloads("counting"), 30, "counting paused", agent)
        seen = len(recorder.payloads("stats"))
        wait_until(lambda: len(recorder.payloads("stats")) >= seen + 2, 30, "stats while paused", agent)
        paused = [parse_stats(payload) for payload in recorder.payloads("stats")[seen:]]
        assert paused[-1].counting == "paused"
        assert paused[-1].frames_total == paused[0].frames_total

        publish_once(mqtt_broker.host, mqtt_broker.port, f"classroom/{DEVICE_ID}/command", "resume")
        wait_until(lambda: recorder.payloads("counting")[-1] == b"active", 30, "counting active", agent)
        windows_before_stop = len(recorder.payloads("window"))
        assert agent.terminate(timeout_s=20) == 0, agent.log_text()[-3000:]
        wait_until(lambda: recorder.payloads("status")[-1] == b"stopped", 10, "status stopped")
    finally:
        agent.kill()
        recorder.stop()

    log_text = agent.log_text()
    assert "Received SIGTERM, closing the open window" in log_text
    assert "Counting paused by command" in log_text
    assert "Counting resumed by command" in log_text
    summary = json.loads(agent.summary_path.read_text())
    assert summary["windows_pending"] == 0
    assert len(recorder.payloads("window")) >= windows_before_stop
    assert len(recorder.payloads("window")) == summary["windows_published"]
