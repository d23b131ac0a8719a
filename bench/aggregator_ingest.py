"""Benchmark: windows per second from a Mosquitto queue to committed rows.

The broker first queues N windows for the aggregator's persistent session while the
aggregator is stopped. Then the aggregator starts, and the clock runs until the last
window is committed. The publisher therefore does not compete for the CPU during the
measurement. The aggregator process is pinned to core 0 with os.sched_setaffinity, and
the broker to core 1. Besides the rate, the output gives the aggregator's CPU time and
how long other processes ran on core 0.

    python -m bench.aggregator_ingest --windows 100000 [--db postgresql+psycopg://postgres@127.0.0.1/bench]

--receive-only times the MQTT client alone, --processes N a share group of N aggregator
processes that may use both cores.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
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
from aggregator.mqtt_client import BufferedClient  # noqa: E402
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


def receive_only(port: int, count: int, buffered: bool) -> float:
    """Return the seconds an MQTT client alone takes to receive and acknowledge ``count`` queued messages.

    No validation and no database: the ceiling of the network loop on this machine. With
    ``buffered``, the client is the ingest's ``BufferedClient`` with its QoS 1 callback, and
    it acknowledges in blocks of 500 as the ingest's writer does per batch; otherwise it is
    plain paho with ``on_message`` and one PUBACK per message.
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

    unacknowledged: list[int] = []

    def on_qos1_publish(topic: bytes, payload: bytes, mid: int, connection: int) -> None:
        received[0] += 1
        unacknowledged.append(mid)
        if len(unacknowledged) >= 500 or received[0] == count:
            client.ack_many(unacknowledged, connection)
            unacknowledged.clear()
        if received[0] == count:
            done.set()

    client_class = BufferedClient if buffered else mqtt.Client
    client = client_class(
        CallbackAPIVersion.VERSION2, client_id="bench-aggregator", protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True
    )
    if buffered:
        client.on_qos1_publish = on_qos1_publish
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe("classroom/+/window", options=SubscribeOptions(qos=1))
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600
    properties.ReceiveMaximum = 4000
    began = time.perf_counter()
    began_cpu_s = time.process_time()
    client.connect("127.0.0.1", port, clean_start=False, properties=properties)
    client.loop_start()
    done.wait(600)
    elapsed_s = time.perf_counter() - began
    cpu_s = time.process_time() - began_cpu_s
    print(f"{cpu_s:.2f} CPU s = {count / cpu_s:,.0f} windows per CPU s")
    client.disconnect()
    client.loop_stop()
    return elapsed_s


def core_busy_s(core: int) -> float:
    """Seconds core ``core`` has been busy since boot, for all processes (Linux /proc/stat; 0.0 elsewhere)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return 0.0
    for line in lines:
        fields = line.split()
        if fields[0] == f"cpu{core}":
            # user nice system idle iowait irq softirq steal ...: all but idle and iowait are busy.
            ticks = [int(value) for value in fields[1:9]]
            busy = sum(ticks) - ticks[3] - ticks[4]
            return busy / os.sysconf("SC_CLK_TCK")
    return 0.0


def run_member(  # type: ignore[no-untyped-def]
    url: str, settings: IngestSettings, index: int, stored, started, stop
) -> None:
    """Run one aggregator of a share group in this process until ``stop`` is set."""
    os.sched_setaffinity(0, {0, 1})
    with Store.open(url, upgrade=False) as store:
        ingest = Ingest(store, settings)
        started.wait()
        ingest.start()
        while not stop.is_set():
            stored[index] = ingest.stats().stored
            time.sleep(0.02)
        stored[index] = ingest.stop().stored


def run_share_group(url: str, port: int, count: int, processes: int, base: dict) -> float:
    """Return the seconds that ``processes`` aggregators in one share group take to commit ``count`` windows."""
    context = multiprocessing.get_context("spawn")
    stored = context.Array("q", processes)
    started = context.Event()
    stop = context.Event()
    members = [
        context.Process(
            target=run_member,
            args=(
                url, IngestSettings(client_id=f"bench-aggregator-{index}", **base), index, stored, started, stop
            ),
        )
        for index in range(processes)
    ]
    for member in members:
        member.start()
    # Spawned interpreters take a second or two to import; the clock starts when all are ready.
    time.sleep(5)
    began = time.perf_counter()
    started.set()
    while sum(stored) < count and all(member.is_alive() for member in members):
        time.sleep(0.02)
    elapsed_s = time.perf_counter() - began
    stop.set()
    for member in members:
        member.join(60)
    print(f"windows stored per aggregator: {', '.join(str(value) for value in stored)}")
    return elapsed_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=100_000)
    parser.add_argument("--db", default=None, help="database URL (default: a SQLite file in a temporary folder)")
    parser.add_argument("--batch-rows", type=int, default=None)
    parser.add_argument(
        "--queue-size", type=int, default=None, help="the ingest's queue size and MQTT Receive Maximum"
    )
    parser.add_argument(
        "--pause-s", type=float, default=0.0, help="wait this long before the ingest starts, to attach py-spy"
    )
    parser.add_argument(
        "--receive-only",
        action="store_true",
        help="measure the MQTT client alone: receive and acknowledge, store nothing",
    )
    parser.add_argument(
        "--plain-paho",
        action="store_true",
        help="with --receive-only: use paho's own client, one PUBACK per message",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="run this many aggregators in one share group, each a process on both cores "
        "(default: one, on core 0)",
    )
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})

    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        broker = start_mosquitto(folder, extra_config="max_queued_messages 0\nmax_inflight_messages 0\n")
        # The broker runs on the other core, as on a server where it is a separate process.
        subprocess.run(["taskset", "-p", "-c", "1", str(broker.process.pid)], check=False, capture_output=True)
        url = args.db or f"sqlite:///{folder / 'bench.db'}"
        overrides: dict[str, int] = {}
        if args.batch_rows:
            overrides["batch_max_rows"] = args.batch_rows
        if args.queue_size:
            overrides["queue_size"] = args.queue_size
        base = {"host": "127.0.0.1", "port": broker.port, **overrides}
        if args.processes > 1:
            base["share_group"] = "bench"
        settings = IngestSettings(client_id="bench-aggregator", **base)
        try:
            with Store.open(url) as store:
                # Create the persistent sessions and their subscriptions, then go offline.
                for index in range(args.processes):
                    client_id = "bench-aggregator" if args.processes == 1 else f"bench-aggregator-{index}"
                    ingest = Ingest(store, IngestSettings(client_id=client_id, **base))
                    ingest.start()
                    ingest.stop()
                payloads = build_payloads(args.windows)
                began = time.perf_counter()
                publish_all(broker.port, payloads)
                print(f"queued {args.windows} windows in the broker in {time.perf_counter() - began:.1f} s")

                if args.receive_only:
                    print(f"process {os.getpid()} starts receiving in {args.pause_s:g} s", flush=True)
                    time.sleep(args.pause_s)
                    elapsed_s = receive_only(broker.port, args.windows, buffered=not args.plain_paho)
                    client_name = "paho" if args.plain_paho else "BufferedClient"
                    print(f"{client_name} only: {args.windows} windows received in {elapsed_s:.2f} s = "
                          f"{args.windows / elapsed_s:,.0f} windows/s")
                    return 0
                if args.processes > 1:
                    elapsed_s = run_share_group(url, broker.port, args.windows, args.processes, base)
                    rows = store.count_windows()
                    print(
                        f"{store.dialect_name}, {args.processes} aggregators in a share group: {rows} of "
                        f"{args.windows} windows committed in {elapsed_s:.2f} s = "
                        f"{rows / elapsed_s:,.0f} windows/s"
                    )
                    return 0 if rows == args.windows else 1
                print(f"process {os.getpid()} starts the ingest in {args.pause_s:g} s", flush=True)
                time.sleep(args.pause_s)
                ingest = Ingest(store, settings)
                began = time.perf_counter()
                # CPU time of all threads of this process, which does nothing else meanwhile: on a
                # shared machine windows per CPU second show what one free core would do, as
                # long as the process does not wait for the disk.
                began_cpu_s = time.process_time()
                began_core_s = core_busy_s(0)
                ingest.start()
                # The writer counts a window as stored after its commit. Polling that counter costs
                # nothing, while count(*) in SQL scans the whole table and took 10 % of the core.
                while ingest.stats().stored < args.windows and ingest.failure is None:
                    time.sleep(0.02)
                elapsed_s = time.perf_counter() - began
                cpu_s = time.process_time() - began_cpu_s
                # Core 0 runs this process, and any other process that the scheduler puts there.
                others_s = core_busy_s(0) - began_core_s - cpu_s
                stats = ingest.stop()
                rows = store.count_windows()
                if rows != args.windows:
                    print(f"error: {rows} rows in the table, {args.windows} expected")
                    return 1
                print(
                    f"{store.dialect_name}: {args.windows} windows committed in {elapsed_s:.2f} s = "
                    f"{args.windows / elapsed_s:,.0f} windows/s; {cpu_s:.2f} CPU s = "
                    f"{args.windows / cpu_s:,.0f} "
                    f"windows per CPU s; other processes used core 0 for {max(others_s, 0):.1f} s "
                    f"(stored {stats.stored}, duplicates {stats.duplicates}, rejected {stats.rejected})"
                )
        finally:
            stop_mosquitto(broker)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
