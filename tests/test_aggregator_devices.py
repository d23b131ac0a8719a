"""Devices from window, status, counting and stats topics; fuzzed payloads never crash the ingest."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.cli import main
from aggregator.devices import list_devices
from aggregator.errors import ConfigError
from aggregator.ingest import Ingest
from aggregator.store import ReceivedWindow, Store
from tests.conftest import Broker
from tests.test_aggregator_helpers import ingest_settings, make_window, publisher, running_ingest, wait_until

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'aggregator.db'}"


def test_devices_status_and_stats(mqtt_broker: Broker, db_url: str, capsys) -> None:
    with Store.open(db_url) as store:
        with running_ingest(store, ingest_settings(mqtt_broker)) as ingest, publisher(mqtt_broker) as client:
            client.publish_window(make_window("cam-1", START, {"happy": 2}))
            client.publish_bytes("classroom/cam-1/status", b"online")
            client.publish_bytes("classroom/cam-1/stats", json.dumps({"fps": 2.0, "future": [1]}).encode())
            client.publish_bytes("classroom/cam-2/status", b"offline")
            client.publish_bytes("classroom/cam-3/stats", b"[not an object")
            client.publish_bytes("classroom/cam-3/status", b"sleeping")
            client.publish_bytes("classroom/cam-2/counting", b"paused")
            client.publish_bytes("classroom/cam-1/counting", b"paused")
            client.publish_bytes("classroom/cam-1/counting", b"active")
            client.publish_bytes("classroom/cam-3/counting", b"stopped")
            wait_until(lambda: ingest.stats().received == 10 and ingest.stats().queued == 0, "10 messages")
            wait_until(lambda: len(list_devices(store)) == 2, "2 devices stored")
            stats = ingest.stop()
        devices = {device.device_id: device for device in list_devices(store)}

    assert stats.rejected_by_reason == {"invalid_device_message": 3}
    assert devices["cam-1"].room == "B-101"
    assert devices["cam-1"].status == "online"
    assert devices["cam-1"].last_window_end == START + timedelta(seconds=10)
    assert devices["cam-1"].stats() == {"fps": 2.0, "future": [1]}
    assert devices["cam-2"].status == "offline"
    # The newest counting message of a device wins.
    assert devices["cam-1"].counting == "active"
    assert devices["cam-2"].counting == "paused"
    assert devices["cam-2"].counting_at is not None

    assert main(["devices", "--db", db_url, "--tz", "UTC"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[1].startswith("cam-1")
    assert lines[1].split()[3] == "active"
    assert not lines[1].endswith(("SILENT", "PAUSED"))
    assert lines[2].startswith("cam-2")
    assert lines[2].endswith("SILENT PAUSED")
    assert "2 devices, 1 silent" in captured.err
    assert "1 with counting paused" in captured.err


def test_retained_messages_keep_last_seen(mqtt_broker: Broker, db_url: str, capsys) -> None:
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    with Store.open(db_url) as store:
        store.insert_windows([ReceivedWindow(make_window("cam-7", START, {"sad": 1}), two_hours_ago)])
        # Stored on the broker before the aggregator subscribes, as after an aggregator restart.
        with publisher(mqtt_broker) as client:
            client.publish_bytes("classroom/cam-7/status", b"stopped", retain=True)
            client.publish_bytes("classroom/cam-7/counting", b"paused", retain=True)
            client.publish_bytes("classroom/cam-8/status", b"online", retain=True)
        with running_ingest(store, ingest_settings(mqtt_broker)) as ingest:
            wait_until(
                lambda: {device.device_id: (device.status, device.counting) for device in list_devices(store)}
                == {"cam-7": ("stopped", "paused"), "cam-8": ("online", None)},
                "3 retained messages stored",
            )
            retained_view = {device.device_id: device for device in list_devices(store)}
            with publisher(mqtt_broker) as client:
                client.publish_bytes("classroom/cam-7/status", b"online", retain=True)
                wait_until(
                    lambda: {device.device_id: device.status for device in list_devices(store)}["cam-7"] == "online",
                    "the live status stored",
                )
            live_view = {device.device_id: device for device in list_devices(store)}
            ingest.stop()
        with publisher(mqtt_broker) as client:
            for topic in ("cam-7/status", "cam-7/counting", "cam-8/status"):
                client.publish_bytes(f"classroom/{topic}", b"", retain=True)

    assert retained_view["cam-7"].status == "stopped"
    assert retained_view["cam-7"].counting == "paused"
    assert retained_view["cam-7"].last_seen == two_hours_ago
    # A device first known from a retained copy counts as seen when it arrived.
    assert retained_view["cam-8"].last_seen > two_hours_ago
    assert live_view["cam-7"].status == "online"
    assert live_view["cam-7"].last_seen > two_hours_ago


def test_devices_silent_after_quiet(db_url: str, capsys) -> None:
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    with Store.open(db_url) as store:
        store.insert_windows([ReceivedWindow(make_window("cam-9", START, {"sad": 1}), two_hours_ago)])

    assert main(["devices", "--db", db_url, "--silent-after-s", "3600"]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith("SILENT")


PAYLOADS = st.one_of(
    st.binary(max_size=300),
    st.dictionaries(
        st.sampled_from(
            ["schema_version", "device_id", "room", "window_start", "window_end", "frames_sampled",
             "faces_seen", "min_faces", "suppressed", "counts"]
        ),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30),
                  st.dictionaries(st.text(max_size=8), st.integers())),
    ).map(lambda data: json.dumps(data).encode()),
)


@pytest.mark.slow
def test_ingest_fuzzed_payloads(mqtt_broker: Broker, tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'fuzz.db'}")
    ingest = Ingest(store, ingest_settings(mqtt_broker, client_id="aggregator-fuzz"))
    ingest.start()
    sent = [0]
    try:
        with publisher(mqtt_broker) as client:

            @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
            @given(payload=PAYLOADS, topic=st.sampled_from(["window", "status", "counting", "stats"]))
            def publish(payload: bytes, topic: str) -> None:
                client.publish_bytes(f"classroom/cam-1/{topic}", payload)
                sent[0] += 1

            publish()
            # A valid window after the fuzz must still be stored.
            client.publish_window(make_window("cam-1", START, {"happy": 1}))
            wait_until(lambda: store.count_windows() >= 1, "the valid window stored")
            wait_until(lambda: ingest.stats().received == sent[0] + 1, "every message received")
        assert ingest.failure is None
    finally:
        stats = ingest.stop()
        store.close()
    assert stats.received == sent[0] + 1
    assert stats.stored >= 1
    assert stats.rejected >= 1


def test_room_set_when_status_came_first(db_url: str) -> None:
    from aggregator.devices import DeviceEvent, DeviceTopic

    received_at = datetime.now(UTC)
    with Store.open(db_url) as store:
        store.record_device_events([DeviceEvent("cam-5", DeviceTopic.STATUS, "online", received_at)])
        store.insert_windows([ReceivedWindow(make_window("cam-5", START, {"happy": 1}), received_at)])
        store.insert_windows([ReceivedWindow(make_window("cam-5", START - timedelta(minutes=5), {"sad": 1}), received_at)])
        (device,) = list_devices(store)

    assert device.room == "B-101"
    assert device.status == "online"
    assert device.last_window_end == START + timedelta(seconds=10)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-5", "0", "31622401"])
def test_devices_silent_after_invalid(db_url: str, capsys, value: str) -> None:
    Store.open(db_url).close()

    # The = form lets argparse read "-inf" as a value instead of an option.
    exit_code = main(["devices", "--db", db_url, f"--silent-after-s={value}"])

    err = capsys.readouterr().err
    assert exit_code == 2
    assert err.startswith(f"aggregator: error: Invalid --silent-after-s {value}: ")
    assert "above 0 and at most 31622400 (366 days)" in err
    assert err.count("\n") == 1


def test_device_silent_checks_time(db_url: str) -> None:
    now = datetime.now(UTC)
    with Store.open(db_url) as store:
        store.insert_windows([ReceivedWindow(make_window("cam-9", START, {"sad": 1}), now)])
        [device] = list_devices(store)

    assert device.silent(now, 31_622_400) is False
    with pytest.raises(ConfigError, match="Invalid silent_after_s nan"):
        device.silent(now, float("nan"))
