"""Ingest tests against a private Mosquitto and a SQLite file: storage, duplicates, rejects, restarts."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aggregator import store as store_module
from aggregator.errors import BrokerError, ConfigError
from aggregator.ingest import Ingest, IngestSettings, device_id_in_topic
from aggregator.store import Store
from tests.conftest import REPO_ROOT, Broker, free_port, start_mosquitto, stop_mosquitto
from tests.test_aggregator_helpers import (
    ROOM,
    ingest_settings,
    make_window,
    publisher,
    running_ingest,
    wait_until,
)

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'aggregator.db'}"


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    opened = Store.open(db_url)
    yield opened
    opened.close()


def window_at(device_id: str, index: int, counts: dict[str, int] | None = None, **fields: object):
    return make_window(device_id, START + timedelta(seconds=10 * index), counts, **fields)


def test_ingest_two_devices_stored(mqtt_broker: Broker, store: Store) -> None:
    published = [
        window_at("cam-1", 0, {"happy": 4, "neutral": 2}),
        window_at("cam-1", 1, {"happy": 1, "sad": 3}),
        window_at("cam-1", 2, faces_seen=3),
        window_at("cam-2", 0, {"neutral": 7}),
        window_at("cam-2", 1, {"angry": 1, "neutral": 5}),
    ]
    before = datetime.now(UTC)

    with running_ingest(store, ingest_settings(mqtt_broker)) as ingest, publisher(mqtt_broker) as client:
        for window in published:
            client.publish_window(window)
        wait_until(lambda: store.count_windows() == 5, "5 windows stored")
        stats = ingest.stop()

    assert stats.received == 5
    assert stats.stored == 5
    assert stats.duplicates == 0
    assert stats.rejected == 0
    assert store.count_windows("cam-1") == 3
    assert store.count_windows("cam-2") == 2
    rows = store.windows_in_room(ROOM, START, START + timedelta(minutes=1))
    by_key = {(row.device_id, row.window_start): row for row in rows}
    for window in published:
        row = by_key[(window.device_id, window.window_start)]
        assert row.room == window.room
        assert row.window_end == window.window_end
        assert row.frames_sampled == window.frames_sampled
        assert row.faces_seen == window.faces_seen
        assert row.min_faces == window.min_faces
        assert row.suppressed == window.suppressed
        assert row.counts == window.counts
        assert row.received_at >= before


def test_ingest_same_window_three_times(mqtt_broker: Broker, store: Store) -> None:
    window = window_at("cam-1", 0, {"happy": 2})

    with running_ingest(store, ingest_settings(mqtt_broker)) as ingest, publisher(mqtt_broker) as client:
        for _ in range(3):
            client.publish_window(window)
        wait_until(lambda: ingest.stats().stored + ingest.stats().duplicates == 3, "3 deliveries processed")
        stats = ingest.stop()

    assert stats.stored == 1
    assert stats.duplicates == 2
    assert store.count_windows() == 1


def test_ingest_redelivery_after_restart(mqtt_broker: Broker, store: Store, monkeypatch) -> None:
    window = window_at("cam-1", 0, {"happy": 2})
    settings = ingest_settings(mqtt_broker, client_id="aggregator-redelivery")

    # The first aggregator commits the row but never acknowledges it, as if it crashed right after the commit.
    first = Ingest(store, settings)
    monkeypatch.setattr(first._writer, "_acknowledge", lambda messages: None)
    first.start()
    with publisher(mqtt_broker) as client:
        client.publish_window(window)
        wait_until(lambda: first.stats().stored == 1, "first aggregator stored the window")
    first.stop()

    with running_ingest(store, settings) as second:
        wait_until(lambda: second.stats().duplicates == 1, "broker redelivered the unacknowledged window")
        second_stats = second.stop()

    assert second_stats.stored == 0
    assert store.count_windows() == 1

    # The second aggregator acknowledged the copy, so a third start gets only new windows.
    marker = window_at("cam-1", 1, {"happy": 1})
    with running_ingest(store, settings) as third, publisher(mqtt_broker) as client:
        client.publish_window(marker)
        wait_until(lambda: store.count_windows() == 2, "marker window stored")
        third_stats = third.stop()

    assert third_stats.received == 1
    assert third_stats.duplicates == 0


def test_ingest_offline_windows_arrive(mqtt_broker: Broker, store: Store) -> None:
    settings = ingest_settings(mqtt_broker, client_id="aggregator-offline")
    with running_ingest(store, settings):
        pass

    with publisher(mqtt_broker) as client:
        for index in range(5):
            client.publish_window(window_at("cam-1", index, {"neutral": index + 1}))
    assert store.count_windows() == 0

    with running_ingest(store, settings) as ingest:
        wait_until(lambda: store.count_windows() == 5, "queued windows stored after restart")
        stats = ingest.stop()

    assert stats.stored == 5


def test_ingest_stop_flushes_batch(mqtt_broker: Broker, store: Store) -> None:
    # A batch delay far longer than the test keeps the windows in the writer until stop().
    settings = ingest_settings(mqtt_broker, client_id="aggregator-flush", batch_max_delay_s=600.0)

    with running_ingest(store, settings) as ingest, publisher(mqtt_broker) as client:
        for index in range(3):
            client.publish_window(window_at("cam-1", index, {"happy": 1}))
        wait_until(lambda: ingest.stats().received == 3, "3 windows received")
        stats = ingest.stop()

    assert stats.stored == 3
    assert store.count_windows() == 3

    # They were acknowledged at stop, so a restart receives nothing again.
    with running_ingest(store, ingest_settings(mqtt_broker, client_id="aggregator-flush")) as again:
        with publisher(mqtt_broker) as client:
            client.publish_window(window_at("cam-1", 9, {"happy": 1}))
        wait_until(lambda: store.count_windows() == 4, "marker window stored")
        assert again.stop().received == 1


def malformed_payloads() -> list[tuple[str, bytes, str]]:
    """(topic, payload, expected reason) for each kind of invalid message."""
    valid = json.loads(window_at("cam-1", 0, {"happy": 2, "sad": 1}).to_json())
    wrong_version = {**valid, "schema_version": 2}
    bad_sum = {**valid, "faces_seen": 5}
    extra_field = {**valid, "face_boxes": [[1, 2, 3, 4]]}
    topic = "classroom/cam-1/window"
    return [
        (topic, b"not json at all", "not_json"),
        (topic, b"[1, 2, 3]", "not_json"),
        (topic, json.dumps(wrong_version).encode(), "schema_version"),
        (topic, json.dumps(bad_sum).encode(), "invalid_fields"),
        (topic, json.dumps(extra_field).encode(), "invalid_fields"),
        (topic, b"x" * 1_000_000, "too_large"),
        ("classroom/cam-2/window", json.dumps(valid).encode(), "topic_mismatch"),
    ]


def test_ingest_rejects_malformed(mqtt_broker: Broker, store: Store, caplog) -> None:
    settings = ingest_settings(mqtt_broker, client_id="aggregator-malformed")
    caplog.set_level(logging.WARNING, logger="aggregator")

    with running_ingest(store, settings) as ingest, publisher(mqtt_broker) as client:
        for topic, payload, _ in malformed_payloads():
            client.publish_bytes(topic, payload)
        client.publish_window(window_at("cam-1", 5, {"happy": 1}))
        wait_until(lambda: store.count_windows() == 1, "valid window after the malformed ones stored")
        stats = ingest.stop()

    assert stats.received == 8
    assert stats.rejected == 7
    assert stats.stored == 1
    assert stats.rejected_by_reason == {
        "invalid_fields": 2,
        "not_json": 2,
        "schema_version": 1,
        "too_large": 1,
        "topic_mismatch": 1,
    }
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("classroom/cam-2/window (topic_mismatch)" in line and "'cam-1'" in line for line in warnings)
    assert any("(schema_version)" in line and "unsupported schema_version 2" in line for line in warnings)
    assert any("(too_large)" in line and "1000000 bytes" in line for line in warnings)
    # Rate limit: the second not_json message within the interval is counted but not logged.
    assert sum("(not_json)" in line for line in warnings) == 1

    # Rejected messages were acknowledged, so the broker does not deliver them again.
    with running_ingest(store, settings) as again, publisher(mqtt_broker) as client:
        client.publish_window(window_at("cam-1", 6, {"happy": 1}))
        wait_until(lambda: store.count_windows() == 2, "marker window stored")
        again_stats = again.stop()

    assert again_stats.received == 1
    assert again_stats.rejected == 0


def test_ingest_batch_with_one_bad_message(mqtt_broker: Broker, store: Store) -> None:
    # Eleven messages fill one batch; the long delay keeps the writer from committing earlier.
    settings = ingest_settings(
        mqtt_broker, client_id="aggregator-batch", batch_max_rows=11, batch_max_delay_s=600.0
    )
    bad = json.loads(window_at("cam-1", 5, {"happy": 1}).to_json())
    bad["faces_seen"] = 7

    with running_ingest(store, settings) as ingest, publisher(mqtt_broker) as client:
        for index in range(10):
            if index == 5:
                client.publish_bytes("classroom/cam-1/window", json.dumps(bad).encode())
            client.publish_window(window_at("cam-1", index if index != 5 else 50, {"happy": 1}))
        wait_until(lambda: ingest.stats().stored == 10, "the 10 valid windows of the batch stored")
        stats = ingest.stop()

    assert stats.received == 11
    assert stats.stored == 10
    assert stats.rejected_by_reason == {"invalid_fields": 1}
    assert store.count_windows() == 10

    # The whole batch was acknowledged, the rejected message too.
    with running_ingest(store, ingest_settings(mqtt_broker, client_id="aggregator-batch")) as again:
        with publisher(mqtt_broker) as client:
            client.publish_window(window_at("cam-1", 99, {"happy": 1}))
        wait_until(lambda: store.count_windows() == 11, "marker window stored")
        assert again.stop().received == 1


def test_ingest_survives_validation_bug(mqtt_broker: Broker, store: Store, caplog) -> None:
    settings = ingest_settings(mqtt_broker, client_id="aggregator-validation-bug")
    poison = window_at("cam-1", 1, {"sad": 1})
    ingest = Ingest(store, settings)
    prepare = ingest._writer._prepare

    def failing_prepare(message):
        # Stands in for a bug that a crafted payload triggers inside validation.
        if message.payload == poison.to_json():
            raise RuntimeError("bug in validation")
        return prepare(message)

    ingest._writer._prepare = failing_prepare
    caplog.set_level(logging.ERROR, logger="aggregator")
    ingest.start()
    try:
        with publisher(mqtt_broker) as client:
            client.publish_window(window_at("cam-1", 0, {"happy": 1}))
            client.publish_window(poison)
            client.publish_window(window_at("cam-1", 2, {"happy": 1}))
        wait_until(lambda: ingest.stats().stored == 2, "the two other windows stored")
        assert ingest.failure is None
    finally:
        stats = ingest.stop()

    assert stats.rejected_by_reason == {"invalid_fields": 1}
    assert "Validating a message on topic classroom/cam-1/window failed unexpectedly" in caplog.text


def test_ingest_window_with_mqtt5_properties(mqtt_broker: Broker, store: Store) -> None:
    # BufferedClient skips PUBLISH properties by their length instead of decoding them.
    properties = Properties(PacketTypes.PUBLISH)
    properties.MessageExpiryInterval = 3600
    properties.UserProperty = [("agent", "test"), ("long", "x" * 300)]
    properties.ContentType = "application/json"
    window = window_at("cam-1", 0, {"happy": 2, "sad": 1})
    sender = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="properties-publisher", protocol=MQTTProtocolVersion.MQTTv5
    )
    sender.connect(mqtt_broker.host, mqtt_broker.port)
    sender.loop_start()

    try:
        with running_ingest(store, ingest_settings(mqtt_broker, client_id="aggregator-properties")) as ingest:
            info = sender.publish("classroom/cam-1/window", window.to_json(), qos=1, properties=properties)
            info.wait_for_publish(10)
            wait_until(lambda: store.count_windows() == 1, "window with properties stored")
            stats = ingest.stop()
    finally:
        sender.disconnect()
        sender.loop_stop()

    assert stats.rejected == 0
    (row,) = store.windows_in_room(ROOM, START, START + timedelta(minutes=1))
    assert row.counts == {"happy": 2, "sad": 1}


def persistent_broker(directory: Path, port: int) -> Broker:
    data = directory / "mosquitto-data"
    data.mkdir(exist_ok=True)
    # As root, mosquitto switches to the mosquitto user, which cannot write into pytest's
    # temporary folder, unless the config names root.
    return start_mosquitto(directory, port, f"user root\npersistence true\npersistence_location {data}/\n")


def test_ingest_drops_acks_of_lost_connection(tmp_path: Path, store: Store) -> None:
    port = free_port()
    broker = persistent_broker(tmp_path, port)
    # The writer keeps the windows until stop(), which comes after the reconnect.
    settings = IngestSettings(
        host="127.0.0.1", port=port, client_id="aggregator-reconnect", batch_max_delay_s=600.0
    )
    ingest = Ingest(store, settings)
    queued_acks: list[tuple[int, int]] = []
    ack_many = ingest._client.ack_many

    def recording_ack_many(mids, connection_number):
        queued = ack_many(mids, connection_number)
        queued_acks.append((connection_number, queued))
        return queued

    ingest._client.ack_many = recording_ack_many
    ingest.start()
    try:
        with publisher(broker) as client:
            for index in range(3):
                client.publish_window(window_at("cam-1", index, {"happy": 1}))
        wait_until(lambda: ingest.stats().received == 3, "3 windows received")
        first_connection = ingest._client.connection_number
        stop_mosquitto(broker)
        broker = persistent_broker(tmp_path, port)
        # The broker delivers the 3 unacknowledged windows again on the new connection.
        wait_until(lambda: ingest.stats().received == 6, "3 windows delivered again", timeout_s=60)
        stats = ingest.stop()

        assert stats.stored == 3
        assert stats.duplicates == 3
        last_connection = ingest._client.connection_number
        assert last_connection > first_connection
        assert queued_acks == [(first_connection, 0), (last_connection, 3)]
        # Mosquitto 2.0.11, restarted from its persistence file, sometimes delivers one of
        # these windows once more although all three were acknowledged. The store then
        # counts a duplicate, so only the marker is a new row.
        prompt = IngestSettings(host="127.0.0.1", port=port, client_id="aggregator-reconnect")
        with running_ingest(store, prompt) as again, publisher(broker) as client:
            client.publish_window(window_at("cam-1", 9, {"happy": 1}))
            wait_until(lambda: store.count_windows() == 4, "marker window stored")
            assert again.stop().stored == 1
    finally:
        ingest.stop()
        stop_mosquitto(broker)


def test_ingest_shared_subscription(mqtt_broker: Broker, store: Store) -> None:
    first_settings = ingest_settings(mqtt_broker, client_id="aggregator-a", share_group="aggregators")
    second_settings = ingest_settings(mqtt_broker, client_id="aggregator-b", share_group="aggregators")
    assert first_settings.subscription == "$share/aggregators/classroom/+/window"

    with running_ingest(store, first_settings) as first, running_ingest(store, second_settings) as second:
        with publisher(mqtt_broker) as client:
            for index in range(20):
                client.publish_window(window_at("cam-1", index, {"happy": 1}))
        wait_until(lambda: store.count_windows() == 20, "20 windows stored")
        first_stats = first.stop()
        second_stats = second.stop()

    # Each window went to one member of the group only.
    assert first_stats.received + second_stats.received == 20
    assert first_stats.duplicates + second_stats.duplicates == 0


def test_ingest_retries_locked_database(mqtt_broker: Broker, tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(store_module, "SQLITE_BUSY_TIMEOUT_MS", 50)
    database = tmp_path / "locked.db"
    settings = ingest_settings(mqtt_broker, client_id="aggregator-locked")
    caplog.set_level(logging.ERROR, logger="aggregator")

    with Store.open(f"sqlite:///{database}") as store:
        blocker = sqlite3.connect(database, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            with running_ingest(store, settings) as ingest, publisher(mqtt_broker) as client:
                client.publish_window(window_at("cam-1", 0, {"happy": 1}))
                wait_until(lambda: "database is locked" in caplog.text, "a failed attempt logged")
                # Stop while the database still fails: the window is neither stored nor acknowledged.
                stats = ingest.stop()
                assert stats.stored == 0
                assert ingest.failure is not None
                assert "not stored" in ingest.failure
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()

        with running_ingest(store, settings) as again:
            wait_until(lambda: store.count_windows() == 1, "window redelivered and stored")
            assert again.stop().stored == 1


def test_ingest_unreachable_broker(store: Store) -> None:
    port = free_port()
    settings = IngestSettings(host="127.0.0.1", port=port, client_id="aggregator-unreachable")

    with pytest.raises(BrokerError, match=f"127.0.0.1:{port}.*Start the broker"):
        Ingest(store, settings).start()


def test_ingest_connection_rejected(tmp_path: Path, store: Store) -> None:
    # The later allow_anonymous line overrides the fixture's, so the broker rejects the CONNECT.
    broker = start_mosquitto(tmp_path, extra_config="allow_anonymous false\n")
    try:
        settings = ingest_settings(broker, client_id="aggregator-denied")

        with pytest.raises(
            BrokerError, match="rejected the connection of client id 'aggregator-denied'"
        ) as caught:
            Ingest(store, settings).start()
    finally:
        stop_mosquitto(broker)

    assert f"127.0.0.1:{broker.port}" in str(caught.value)
    assert "Not authorized" in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"port": 0}, "Invalid broker port"),
        ({"topic_prefix": "class/+"}, "Invalid topic prefix"),
        ({"client_id": ""}, "Invalid client id"),
        ({"share_group": "a/b"}, "Invalid share group"),
        ({"queue_size": 70_000}, "Invalid queue size"),
    ],
)
def test_ingest_settings_invalid(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        IngestSettings(**{"client_id": "aggregator-test", **overrides})


@pytest.mark.parametrize(
    ("topic", "device_id"),
    [
        ("classroom/cam-1/window", "cam-1"),
        ("classroom/cam-1/status", None),
        ("classroom//window", None),
        ("classroom/a/b/window", None),
        ("other/cam-1/window", None),
    ],
)
def test_device_id_in_topic(topic: str, device_id: str | None) -> None:
    assert device_id_in_topic(topic, "classroom") == device_id


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_command_stops_on_signal(
    mqtt_broker: Broker, db_url: str, tmp_path: Path, signal_number: int
) -> None:
    log_path = tmp_path / "aggregator.log"
    command = [
        sys.executable, "-m", "aggregator", "run",
        "--db", db_url, "--host", mqtt_broker.host, "--port", str(mqtt_broker.port),
        "--client-id", "aggregator-cli",
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with log_path.open("w") as log_file:
        process = subprocess.Popen(command, stderr=log_file, stdout=subprocess.DEVNULL, env=environment)
    try:
        wait_until(
            lambda: "Subscribed to classroom/+/window" in log_path.read_text(), "aggregator subscribed"
        )
        with publisher(mqtt_broker) as client, Store.open(db_url) as store:
            client.publish_window(window_at("cam-1", 0, {"happy": 1}))
            client.publish_window(window_at("cam-2", 0, {"sad": 1}))
            wait_until(lambda: store.count_windows() == 2, "2 windows stored by the subprocess")
        process.send_signal(signal_number)
        exit_code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    log_text = log_path.read_text()
    assert exit_code == 0, log_text
    assert f"starting ingest from broker 127.0.0.1:{mqtt_broker.port}" in log_text
    assert f"into {db_url}" in log_text
    assert f"Received {signal.Signals(signal_number).name}" in log_text
    assert "Stopped ingest: windows received 2, stored 2, duplicates 0; device messages received 0; messages rejected 0" in log_text
