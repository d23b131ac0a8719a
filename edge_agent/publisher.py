"""MQTT side of the agent (paho-mqtt v2 callback API, MQTT 5): windows from the outbox, status, stats, commands.

Topics are listed in ``edge_agent.mqtt_topics``. Delivery of windows:

- The agent adds each finished window to the ``Outbox`` and wakes the delivery thread.
- The delivery thread hands up to ``max_inflight`` pending windows to paho with QoS 1,
  oldest first, while connected. paho resends them after a reconnect until the broker
  acknowledges them.
- When a PUBACK arrives, the window leaves the outbox. A PUBACK with a failure reason
  code (for example "not authorized") leaves it in the outbox until the next start.

Availability: the last will sets ``status`` to ``offline``; ``online`` is published
only from the CONNACK callback of a successful connect, and ``stopped`` by ``close``.
All three are retained.

The password is read from a file or an environment variable and is never logged.
"""

from __future__ import annotations

import logging
import os
import queue
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge_agent.config import MqttConfig
from edge_agent.errors import BrokerError, ConfigError
from edge_agent.mqtt_topics import (
    COMMAND_PAUSE,
    COMMAND_RESUME,
    STATUS_OFFLINE,
    STATUS_ONLINE,
    STATUS_STOPPED,
    DeviceTopics,
)
from edge_agent.outbox import Outbox
from edge_agent.stats import AgentStats

log = logging.getLogger(__name__)

RECONNECT_MIN_DELAY_S = 1
RECONNECT_MAX_DELAY_S = 60
# How often the delivery thread looks at the outbox when nothing wakes it.
DELIVERY_POLL_S = 0.5
STOPPED_PUBLISH_TIMEOUT_S = 2.0
# CONNACK reason codes that a retry cannot fix: the config or the broker's ACL must change.
_FATAL_CONNACK_NAMES = {
    "Bad user name or password",
    "Not authorized",
    "Client identifier not valid",
    "Banned",
    "Bad authentication method",
}


def status_topic(prefix: str, device_id: str) -> str:
    return DeviceTopics.for_device(prefix, device_id).status


@dataclass(frozen=True)
class PublishResult:
    """Outcome of ``WindowPublisher.close``: windows acknowledged this run and windows left in the outbox."""

    acknowledged: int
    pending: int


def read_password(config: MqttConfig) -> str | None:
    """Return the broker password from ``password_file`` or ``password_env``, or None when neither is set.

    Raises:
        ConfigError: the file is missing, unreadable or empty, or the variable is unset or empty.
            The message names the file or variable, never the password.
    """
    if config.password_file is not None:
        path = Path(config.password_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise ConfigError(f"mqtt.password_file {path} not found: create it or fix the path") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(
                f"Cannot read mqtt.password_file {path}: {error}. Check that the agent's user may read it."
            ) from None
        if not lines or not lines[0]:
            raise ConfigError(f"mqtt.password_file {path} is empty: write the password on its first line")
        return lines[0]
    if config.password_env is not None:
        password = os.environ.get(config.password_env)
        if not password:
            raise ConfigError(
                f"Environment variable {config.password_env} (mqtt.password_env) is unset or empty: "
                "set it in the service's environment"
            )
        return password
    return None


def check_tls_files(config: MqttConfig) -> None:
    """Raise ``ConfigError`` when a configured CA, certificate or key file is missing or cannot be loaded."""
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(config, key)
        if path is None:
            continue
        if Path(path).is_dir():
            raise ConfigError(f"mqtt.{key} {path} is a folder: give the PEM file inside it")
        if not Path(path).is_file():
            raise ConfigError(f"mqtt.{key} {path} not found: fix the path or remove the setting")
    # Loading them here reports a wrong file by name before any connection is tried.
    context = ssl.create_default_context()
    if config.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(config.ca_file))
        except (ssl.SSLError, OSError, ValueError) as error:
            raise ConfigError(
                f"mqtt.ca_file {config.ca_file} contains no valid CA certificate ({error}): give the broker's CA "
                "certificate in PEM format"
            ) from None
    if config.cert_file is not None:
        try:
            context.load_cert_chain(certfile=str(config.cert_file), keyfile=str(config.key_file))
        except (ssl.SSLError, OSError, ValueError) as error:
            raise ConfigError(
                f"mqtt.cert_file {config.cert_file} and key_file {config.key_file} cannot be loaded ({error}): "
                "give PEM files whose key matches the certificate, without a passphrase"
            ) from None


class WindowPublisher:
    """Connected MQTT client of one device: delivers outbox windows, publishes status and stats, takes commands."""

    def __init__(
        self,
        config: MqttConfig,
        device_id: str,
        outbox: Outbox,
        on_command: Callable[[str], None] | None = None,
        stats_source: Callable[[], AgentStats] | None = None,
    ) -> None:
        self._config = config
        self._device_id = device_id
        self._outbox = outbox
        self._on_command = on_command
        self._stats_source = stats_source
        self.topics = DeviceTopics.for_device(config.topic_prefix, device_id)
        self._connected = threading.Event()
        self.ever_connected = False
        self._first_connack = threading.Event()
        self._connack_failure: str | None = None
        self._counting_state: str | None = None

        # Only the delivery thread reads and writes these two.
        self._inflight: dict[int, tuple[int, mqtt.MQTTMessageInfo]] = {}
        self._last_handed_row_id = 0
        # paho calls on_publish with its own lock held, so it only queues failures here.
        self._failed_mids: queue.SimpleQueue[tuple[int, str]] = queue.SimpleQueue()
        self.acknowledged = 0
        self.rejected = 0

        self._wake = threading.Event()
        self._closing = threading.Event()
        self._delivery: threading.Thread | None = None

        check_tls_files(config)
        password = read_password(config)
        client_id = config.client_id or f"edge-agent-{device_id}"[:64]
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if config.uses_tls:
            try:
                self._client.tls_set(
                    ca_certs=str(config.ca_file) if config.ca_file else None,
                    certfile=str(config.cert_file) if config.cert_file else None,
                    keyfile=str(config.key_file) if config.key_file else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (ssl.SSLError, OSError, ValueError) as error:
                raise ConfigError(
                    f"Cannot load the TLS files (mqtt.ca_file {config.ca_file}, cert_file {config.cert_file}, "
                    f"key_file {config.key_file}): {error}. Check that they are PEM files and that the key "
                    "matches the certificate."
                ) from None
        if config.username is not None:
            self._client.username_pw_set(config.username, password)
        self._client.will_set(self.topics.status, STATUS_OFFLINE, qos=1, retain=True)
        self._client.reconnect_delay_set(min_delay=RECONNECT_MIN_DELAY_S, max_delay=RECONNECT_MAX_DELAY_S)
        # Windows beyond max_inflight wait in the outbox, not in paho's memory; the extra
        # places are for status, counting and stats messages.
        self._client.max_inflight_messages_set(config.max_inflight + 4)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message

    @property
    def address(self) -> str:
        return f"{self._config.host}:{self._config.port}"

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self, counting_state: str) -> None:
        """Connect, start the network and delivery threads, and wait up to ``connect_timeout_s`` for a CONNACK.

        An unreachable broker is not an error: windows wait in the outbox and paho keeps
        reconnecting with back-off.

        Raises:
            BrokerError: TLS fails, or the broker refuses the credentials or client id. Other
                refusals, such as "Server busy", are retried like an unreachable broker.
        """
        self._counting_state = counting_state
        try:
            self._client.connect(self._config.host, self._config.port, keepalive=self._config.keepalive_s)
        except ssl.SSLError as error:
            raise BrokerError(
                f"TLS handshake with the MQTT broker at {self.address} failed: {error}. Check mqtt.ca_file "
                "and that the broker's certificate names this host."
            ) from None
        except OSError as error:
            log.warning(
                "MQTT broker %s is unreachable (%s); windows wait in the outbox while paho retries",
                self.address,
                error.strerror or error,
            )
            self._client.connect_async(self._config.host, self._config.port, keepalive=self._config.keepalive_s)
        self._client.loop_start()
        self._delivery = threading.Thread(target=self._deliver_loop, name="outbox-delivery", daemon=True)
        self._delivery.start()
        refused = self._first_connack.wait(self._config.connect_timeout_s) and self._connack_failure
        if refused and self._connack_failure in _FATAL_CONNACK_NAMES:
            self._stop_threads()
            raise BrokerError(
                f"MQTT broker at {self.address} refused the connection: {self._connack_failure}. "
                "Check [mqtt] username and the password file or variable, and the broker's ACL for this client id."
            )
        if not self._connected.is_set():
            log.warning("No CONNACK from %s within %s s; continuing offline", self.address, self._config.connect_timeout_s)

    def wake(self) -> None:
        """Tell the delivery thread that the outbox has a new window."""
        self._wake.set()

    def publish_counting(self, state: str) -> None:
        """Publish the retained counting state (active or paused); resent on every reconnect."""
        self._counting_state = state
        if self._connected.is_set():
            self._client.publish(self.topics.counting, state, qos=1, retain=True)

    def publish_stats(self, stats: AgentStats) -> None:
        if self._connected.is_set():
            self._client.publish(self.topics.stats, stats.to_json(), qos=0, retain=True)

    def close(self, drain_timeout_s: float | None = None) -> PublishResult:
        """Wait up to ``drain_timeout_s`` for pending windows to be acknowledged, publish ``stopped``, disconnect.

        Windows still unacknowledged stay in the outbox and are sent at the next start.
        """
        timeout_s = self._config.publish_timeout_s if drain_timeout_s is None else drain_timeout_s
        deadline = time.monotonic() + timeout_s
        while self._outbox.depth and self._connected.is_set() and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.05)
        self._closing.set()
        self._wake.set()
        if self._delivery is not None:
            self._delivery.join(timeout=5.0)
        self._reconcile()
        pending = self._outbox.depth
        if pending:
            log.warning(
                "%d window(s) not yet acknowledged by %s stay in the outbox %s for the next start",
                pending,
                self.address,
                self._outbox.path,
            )
        if self._connected.is_set():
            stopped = self._client.publish(self.topics.status, STATUS_STOPPED, qos=1, retain=True)
            try:
                stopped.wait_for_publish(timeout=STOPPED_PUBLISH_TIMEOUT_S)
            except (RuntimeError, ValueError) as error:
                log.warning("Could not publish status stopped: %s", error)
        self._client.disconnect()
        self._client.loop_stop()
        return PublishResult(self.acknowledged, pending)

    def _stop_threads(self) -> None:
        self._closing.set()
        self._wake.set()
        if self._delivery is not None:
            self._delivery.join(timeout=5.0)
        self._client.disconnect()
        self._client.loop_stop()

    # Delivery thread -------------------------------------------------------------------

    def _deliver_loop(self) -> None:
        next_stats_at = time.monotonic() + self._config.stats_interval_s
        while not self._closing.is_set():
            self._wake.wait(DELIVERY_POLL_S)
            self._wake.clear()
            try:
                self._reconcile()
                if self._connected.is_set() and not self._closing.is_set():
                    self._hand_over()
                if self._stats_source is not None and time.monotonic() >= next_stats_at:
                    next_stats_at = time.monotonic() + self._config.stats_interval_s
                    self.publish_stats(self._stats_source())
            except Exception:
                # The thread must outlive one bad step, or windows would silently stop leaving the outbox.
                log.exception("Outbox delivery step failed; retrying in %.1f s", DELIVERY_POLL_S)

    def _hand_over(self) -> None:
        free = self._config.max_inflight - len(self._inflight)
        if free <= 0:
            return
        for entry in self._outbox.pending(after_row_id=self._last_handed_row_id, limit=free):
            info = self._client.publish(self.topics.window, entry.payload, qos=1)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                log.error("Cannot queue window %s: %s", entry.window_start, mqtt.error_string(info.rc))
                return
            self._inflight[info.mid] = (entry.row_id, info)
            self._last_handed_row_id = entry.row_id
            log.debug("Window %s handed to paho (mid %d)", entry.window_start, info.mid)

    def _reconcile(self) -> None:
        # paho queues a failure before it marks the message published, so reading the
        # published flags first and the failures second misses none.
        published = [mid for mid, (_, info) in self._inflight.items() if info.is_published()]
        failed: dict[int, str] = {}
        while True:
            try:
                mid, reason = self._failed_mids.get_nowait()
            except queue.Empty:
                break
            failed[mid] = reason
        for mid in published:
            row_id, _ = self._inflight.pop(mid)
            if mid in failed:
                self.rejected += 1
                log.error(
                    "Broker %s rejected window row %d: %s; it stays in the outbox until the next start",
                    self.address,
                    row_id,
                    failed[mid],
                )
                continue
            self._outbox.remove(row_id)
            self.acknowledged += 1

    # paho callbacks (network thread) ---------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._connack_failure = str(reason_code)
            log.error("MQTT broker %s refused the connection: %s", self.address, reason_code)
            if str(reason_code) in _FATAL_CONNACK_NAMES:
                log.error("Fix the credentials or the broker ACL; paho keeps retrying with back-off")
            self._first_connack.set()
            return
        self._connack_failure = None
        log.info("Connected to MQTT broker %s as %s", self.address, self._device_id)
        client.subscribe(self.topics.command, qos=1)
        client.publish(self.topics.status, STATUS_ONLINE, qos=1, retain=True)
        if self._counting_state is not None:
            client.publish(self.topics.counting, self._counting_state, qos=1, retain=True)
        self.ever_connected = True
        self._connected.set()
        self._first_connack.set()
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if reason_code.is_failure:
            log.warning("Disconnected from MQTT broker %s (%s); paho reconnects with back-off", self.address, reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._failed_mids.put((mid, str(reason_code)))
        self._wake.set()

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        command = message.payload.decode("utf-8", errors="replace").strip().lower()
        if command not in (COMMAND_PAUSE, COMMAND_RESUME):
            log.warning(
                "Ignoring command %r on %s: use %s or %s", command[:40], message.topic, COMMAND_PAUSE, COMMAND_RESUME
            )
            return
        if self._on_command is not None:
            self._on_command(command)
