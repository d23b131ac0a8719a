"""Benchmark: windows per second from a Mosquitto queue to committed rows.

The broker first queues N windows for the aggregator's persistent session while the
aggregator is stopped. Then the aggregator starts, and the clock runs until the last
window is committed. The publisher therefore does not compete for the CPU during the
measurement. The aggregator process is pinned to one core with os.sched_setaffinity.

    python -m bench.aggregator_ingest --windows 100000 [--db postgresql+psycopg://postgres@127.0.0.1/bench]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from aggregator.ingest import Ingest, IngestSettings  # noqa: E402
from aggregator.store import Store  # noqa: E402
from edge_agent.payload import WindowReport, window_topic  # noqa: E402
from tests.conftest import start_mosquitto, stop_mosquitto  # noqa: E402

PREFIX = "classroom"
DEVICES = 200


def build_payloads(count: int) -> list[tuple[str, bytes]]:
    start = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    payloads = []
    for index in range(count):
        device_id = f"pi-{index % DEVICES:03d}"
        window_start = start + timedelta(seconds=10 * (index // DEVICES))
        report = WindowReport(
            device_id=device_id,
            room=f"R{index % DEVICES:03d}",
            window_start=window_start,
            window_end=window_start + timedelta(seconds=10),
            frames_sampled=20,
            faces_seen=400,
            min_faces=5,
            suppressed=False,
            counts={"angry": 3, "disgust": 0, "fear": 5, "happy": 61, "sad": 22, "surprise": 9, "neutral": 300},
        )
        payloads.append((window_topic(PREFIX, device_id), report.to_json()))
    return payloads


def publish_all(port: int, payloads: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher", protocol=MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    # Chunks keep paho's own queue of unacknowledged publishes bounded.
    for first in range(0, len(payloads), 5000):
        infos = [client.publish(topic, payload, qos=1) for topic, payload in payloads[first : first + 5000]]
        for info in infos:
            info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


def receive_only(port: int, count: int) -> float:
    """Return the seconds paho alone takes to receive and acknowledge ``count`` queued messages.

    No validation and no database: the ceiling of paho's network loop on this machine.
    """
    import threading

    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions

    done = threading.Event()
    received = [0]

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        client.ack(message.mid, message.qos)
        received[0] += 1
        if received[0] == count:
            done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-aggregator", protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True
    )
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe("classroom/+/window", options=SubscribeOptions(qos=1))
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600
    properties.ReceiveMaximum = 4000
    began = time.perf_counter()
    client.connect("127.0.0.1", port, clean_start=False, properties=properties)
    client.loop_start()
    done.wait(600)
    elapsed_s = time.perf_counter() - began
    client.disconnect()
    client.loop_stop()
    return elapsed_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=100_000)
    parser.add_argument("--db", default=None, help="database URL (default: a SQLite file in a temporary folder)")
    parser.add_argument("--batch-rows", type=int, default=None)
    parser.add_argument(
        "--pause-s", type=float, default=0.0, help="wait this long before the ingest starts, to attach py-spy"
    )
    parser.add_argument(
        "--receive-only", action="store_true", help="measure paho alone: receive and acknowledge, store nothing"
    )
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})

    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        broker = start_mosquitto(folder, extra_config="max_queued_messages 0\nmax_inflight_messages 0\n")
        # The broker runs on the other core, as on a server where it is a separate process.
        subprocess.run(["taskset", "-p", "-c", "1", str(broker.process.pid)], check=False, capture_output=True)
        url = args.db or f"sqlite:///{folder / 'bench.db'}"
        overrides = {"batch_max_rows": args.batch_rows} if args.batch_rows else {}
        settings = IngestSettings(host="127.0.0.1", port=broker.port, client_id="bench-aggregator", **overrides)
        try:
            with Store.open(url) as store:
                # Create the persistent session and its subscription, then go offline.
                ingest = Ingest(store, settings)
                ingest.start()
                ingest.stop()
                payloads = build_payloads(args.windows)
                began = time.perf_counter()
                publish_all(broker.port, payloads)
                print(f"queued {args.windows} windows in the broker in {time.perf_counter() - began:.1f} s")

                if args.receive_only:
                    elapsed_s = receive_only(broker.port, args.windows)
                    print(f"paho only: {args.windows} windows received in {elapsed_s:.2f} s = "
                          f"{args.windows / elapsed_s:,.0f} windows/s")
                    return 0
                print(f"process {os.getpid()} starts the ingest in {args.pause_s:g} s", flush=True)
                time.sleep(args.pause_s)
                ingest = Ingest(store, settings)
                began = time.perf_counter()
                ingest.start()
                while store.count_windows() < args.windows:
                    time.sleep(0.05)
                elapsed_s = time.perf_counter() - began
                stats = ingest.stop()
                print(
                    f"{store.dialect_name}: {args.windows} windows committed in {elapsed_s:.2f} s = "
                    f"{args.windows / elapsed_s:,.0f} windows/s (stored {stats.stored}, duplicates "
                    f"{stats.duplicates}, rejected {stats.rejected})"
                )
        finally:
            stop_mosquitto(broker)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
