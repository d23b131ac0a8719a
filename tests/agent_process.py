"""Helpers for tests that run the edge agent as a separate process, as systemd would."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import MEDIA_DIR, REPO_ROOT

VIDEO = MEDIA_DIR / "single_face.mp4"
DEVICE_ID = "pi-test"


def write_live_config(directory: Path, port: int, extra: str = "") -> Path:
    """Write a config that reads the bundled video as a live stream, reopened whenever it ends.

    OpenCV opens a file path as a stream, so the agent treats it like an RTSP camera:
    wall-clock timestamps, 1 s windows, and a reopen with back-off at every end.
    """
    config = directory / "agent.toml"
    config.write_text(
        f'device_id = "{DEVICE_ID}"\nroom = "101"\nbudget_mib = 1024\n'
        f'[source]\nkind = "camera"\nuri = "{VIDEO}"\nsample_fps = 4.0\n'
        "reconnect_min_s = 0.3\nreconnect_max_s = 0.3\n"
        "[window]\nlength_s = 1.0\nmin_faces = 1\n"
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nconnect_timeout_s = 2.0\nstats_interval_s = 1.0\n'
        f'[outbox]\npath = "{directory / "outbox.sqlite3"}"\n' + extra
    )
    return config


@dataclass
class AgentProcess:
    """A running ``edge-agent run`` whose log goes to a file."""

    process: subprocess.Popen
    log_path: Path
    summary_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout_s: float = 30.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def start_agent(config: Path, directory: Path, name: str = "agent", env: dict | None = None) -> AgentProcess:
    log_path = directory / f"{name}.log"
    summary_path = directory / f"{name}-summary.json"
    command = [
        sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config),
        "--log-level", "DEBUG", "--summary-json", str(summary_path),
    ]
    with log_path.open("w") as log_file:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    return AgentProcess(process, log_path, summary_path)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, agent: AgentProcess | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if agent is not None and agent.process.poll() is not None:
            raise AssertionError(f"agent exited with {agent.process.returncode} while waiting for {what}:\n"
                                 f"{agent.log_text()[-3000:]}")
        time.sleep(0.1)
    tail = agent.log_text()[-3000:] if agent is not None else ""
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{tail}")


def outbox_window_starts(path: Path) -> list[str]:
    """Return the window starts pending in an outbox file, read beside the running agent."""
    if not path.exists():
        return []
    with sqlite3.connect(path, timeout=5.0) as db:
        try:
            return [row[0] for row in db.execute("SELECT window_start FROM windows ORDER BY id")]
        except sqlite3.OperationalError:
            return []


@dataclass
class Recorder:
    """An MQTT subscriber that records every message on a topic filter, reconnecting after outages."""

    host: str
    port: int
    topic_filter: str
    messages: list[mqtt.MQTTMessage] = field(default_factory=list)
    client: mqtt.Client | None = None
    subscribed: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, **tls_and_auth) -> Recorder:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if "username" in tls_and_auth:
            self.client.username_pw_set(tls_and_auth["username"], tls_and_auth.get("password"))
        if "ca_file" in tls_and_auth:
            self.client.tls_set(ca_certs=str(tls_and_auth["ca_file"]))

        def on_connect(client, userdata, flags, reason_code, properties):
            client.subscribe(self.topic_filter, qos=1)

        def on_subscribe(client, userdata, mid, reason_codes, properties):
            self.subscribed.set()

        def on_message(client, userdata, message):
            with self.lock:
                self.messages.append(message)

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "recorder did not subscribe"
        return self

    def payloads(self, suffix: str) -> list[bytes]:
        with self.lock:
            return [message.payload for message in self.messages if message.topic.endswith("/" + suffix)]

    def all(self) -> list[mqtt.MQTTMessage]:
        with self.lock:
            return list(self.messages)

    def stop(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()


def publish_once(host: str, port: int, topic: str, payload: str, retain: bool = False) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(host, port)
    client.loop_start()
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(timeout=5)
    client.disconnect()
    client.loop_stop()
