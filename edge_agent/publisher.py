"""MQTT publishing of window reports with QoS 1 (paho-mqtt v2 callback API).

Topics, under ``{prefix}/{device_id}/``:

- ``window``: one ``WindowReport`` JSON per window, QoS 1, not retained.
- ``status``: ``online`` after a successful CONNACK, ``stopped`` on a clean exit, and
  ``offline`` as the last will when the connection drops; QoS 1, retained.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge_agent.config import MqttConfig
from edge_agent.errors import BrokerError
from edge_agent.payload import WindowReport, window_topic

log = logging.getLogger(__name__)


def status_topic(prefix: str, device_id: str) -> str:
    return f"{prefix}/{device_id}/status"


@dataclass(frozen=True)
class PublishResult:
    """Outcome of ``WindowPublisher.close``: windows handed to paho and windows the broker acknowledged."""

    published: int
    acknowledged: int


class WindowPublisher:
    """Connected MQTT client that publishes window reports and the device's availability."""

    def __init__(self, config: MqttConfig, device_id: str) -> None:
        self._config = config
        self._device_id = device_id
        self._status_topic = status_topic(config.topic_prefix, device_id)
        self._window_topic = window_topic(config.topic_prefix, device_id)
        self._connected = threading.Event()
        self._connack_failure: str | None = None
        self._pending: list[mqtt.MQTTMessageInfo] = []
        self._published = 0
        self._acknowledged = 0

        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"edge-agent-{device_id}", protocol=mqtt.MQTTv5
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.will_set(self._status_topic, "offline", qos=1, retain=True)
        self._client.reconnect_delay_set(min_delay=1, max_delay=60)

    @property
    def address(self) -> str:
        return f"{self._config.host}:{self._config.port}"

    def connect(self) -> None:
        """Connect and wait for the CONNACK.

        Raises:
            BrokerError: the broker is unreachable, refuses the connection, or does not
                answer within ``connect_timeout_s``.
        """
        try:
            self._client.connect(self._config.host, self._config.port, keepalive=self._config.keepalive_s)
        except OSError as error:
            raise BrokerError(
                f"Cannot connect to the MQTT broker at {self.address}: {error.strerror or error}. "
                "Check that the broker runs and that [mqtt] host and port in the config are right."
            ) from None
        self._client.loop_start()
        if not self._connected.wait(self._config.connect_timeout_s):
            self._client.loop_stop()
            reason = self._connack_failure or f"no CONNACK within {self._config.connect_timeout_s} s"
            raise BrokerError(f"MQTT broker at {self.address} did not accept the connection: {reason}.")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._connack_failure = str(reason_code)
            log.error("MQTT broker %s refused the connection: %s", self.address, reason_code)
            return
        log.info("Connected to MQTT broker %s as %s", self.address, self._device_id)
        client.publish(self._status_topic, "online", qos=1, retain=True)
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if reason_code.is_failure:
            log.warning("Disconnected from MQTT broker %s (%s); paho reconnects", self.address, reason_code)

    def publish(self, report: WindowReport) -> None:
        """Queue one report for delivery with QoS 1; paho resends it until PUBACK."""
        info = self._client.publish(self._window_topic, report.to_json(), qos=1)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.error("Cannot queue window %s: %s", report.window_start.isoformat(), mqtt.error_string(info.rc))
        self._pending.append(info)
        self._published += 1
        self._collect_acknowledged()
        log.info(
            "Window %s: %d frames, %d faces%s",
            report.window_start.isoformat(),
            report.frames_sampled,
            report.faces_seen,
            ", suppressed" if report.suppressed else "",
        )

    def _collect_acknowledged(self) -> None:
        still_pending = [info for info in self._pending if not info.is_published()]
        self._acknowledged += len(self._pending) - len(still_pending)
        self._pending = still_pending

    def close(self) -> PublishResult:
        """Wait up to ``publish_timeout_s`` for outstanding PUBACKs, publish ``stopped`` and disconnect."""
        for info in self._pending:
            try:
                info.wait_for_publish(timeout=self._config.publish_timeout_s)
            except (RuntimeError, ValueError) as error:
                log.warning("Window not delivered: %s", error)
        self._collect_acknowledged()
        if self._pending:
            log.error(
                "%d window(s) were not acknowledged by %s within %s s and are lost",
                len(self._pending),
                self.address,
                self._config.publish_timeout_s,
            )
        stopped = self._client.publish(self._status_topic, "stopped", qos=1, retain=True)
        try:
            stopped.wait_for_publish(timeout=2.0)
        except (RuntimeError, ValueError):
            pass
        self._client.disconnect()
        self._client.loop_stop()
        return PublishResult(self._published, self._acknowledged)
