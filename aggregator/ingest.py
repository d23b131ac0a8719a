"""MQTT ingest: subscribes to the window topics of every device and stores each payload once.

Delivery guarantees, with paho-mqtt 2 and MQTT 5:

- The client keeps a persistent session (fixed client id, clean start off, a session
  expiry interval), so the broker queues windows while the aggregator is down and
  delivers them when it connects again.
- Messages are acknowledged manually and only after their rows are committed (see
  ``aggregator.writer``). A crash between receipt and commit leaves the message
  unacknowledged, and the broker redelivers it at the next connect.
- Inserts skip any (device_id, window_start) already stored, so redeliveries and
  repeated publishes leave one row.
- An invalid payload is counted, logged (rate-limited), acknowledged so that it is not
  redelivered forever, and dropped.
- A message is acknowledged only on the connection it arrived on (see
  ``aggregator.mqtt_client``).

paho's network thread only appends each message to the writer's queue; validation,
storage and acknowledgement happen in the writer thread, in batches.

Each aggregator also subscribes, without a share group, to every device's ``status``,
``counting`` and ``stats`` topics: a broker sends retained messages only to non-shared
subscriptions, and the device rows are updated idempotently however many aggregators
store the same message.

The broker decides how many windows wait for the aggregator, offline or falling behind
a burst. Mosquitto 2.0 keeps at most ``max_queued_messages`` (default 1000) per client
beyond those in flight and drops the rest without telling either side, so a deployment
must raise it above the windows of its longest expected outage.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from aggregator import __version__
from aggregator.devices import DeviceEvent, DeviceTopic, parse_device_message
from aggregator.errors import BrokerError, ConfigError
from aggregator.mqtt_client import BufferedClient
from aggregator.rejections import RejectionLog, RejectReason
from aggregator.store import ReceivedWindow, Store
from aggregator.writer import BatchWriter, InboundMessage
from edge_agent.payload import (
    DEFAULT_TOPIC_PREFIX,
    DEVICE_ID_PATTERN as DEVICE_ID_REGEX,
    MAX_PAYLOAD_BYTES,
    PayloadError,
    parse_window,
    window_subscription,
)

log = logging.getLogger(__name__)

TOPIC_PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
SHARE_GROUP_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DEVICE_ID_PATTERN = re.compile(DEVICE_ID_REGEX)
RECONNECT_MIN_DELAY_S = 1
RECONNECT_MAX_DELAY_S = 30
DISCONNECT_TIMEOUT_S = 5.0


def default_client_id() -> str:
    """Return ``aggregator-<hostname>``: fixed across restarts, so the broker finds the session again."""
    return f"aggregator-{socket.gethostname()}"[:64]


@dataclass(frozen=True)
class IngestSettings:
    """Broker connection, subscription and batching of the ingest.

    TLS is on when ``tls`` is true or a CA file is given; without a CA file the
    system's trusted CAs verify the broker. ``password`` is never logged or shown in repr.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    client_id: str = field(default_factory=default_client_id)
    # Aggregators with the same share group split the windows between them (MQTT 5 shared subscription).
    share_group: str | None = None
    # How long the broker keeps the session, and the windows queued for it, after a disconnect.
    session_expiry_s: int = 7 * 24 * 3600
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    # A SQLite commit with synchronous = FULL costs a few milliseconds, so batches of a few
    # thousand rows spread it to a few microseconds per window.
    batch_max_rows: int = 2000
    batch_max_delay_s: float = 0.2
    # Also sent as the MQTT 5 Receive Maximum, so the broker never has more unacknowledged
    # messages in flight than the queue holds. Twice the batch, so the broker keeps sending
    # while a batch commits.
    queue_size: int = 4000
    reject_log_interval_s: float = 60.0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("The broker host is empty: give --host, for example 127.0.0.1")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"Invalid broker port {self.port}: use 1 to 65535")
        if not TOPIC_PREFIX_PATTERN.match(self.topic_prefix):
            raise ConfigError(
                f"Invalid topic prefix {self.topic_prefix!r}: use letters, digits, '_' and '-' in "
                "segments separated by '/', as in the agents' mqtt.topic_prefix"
            )
        if (
            not self.client_id
            or len(self.client_id.encode()) > 65535
            or any(c in self.client_id for c in "+#/")
        ):
            raise ConfigError(
                f"Invalid client id {self.client_id!r}: use a non-empty name without '/', '+' or '#'"
            )
        if self.share_group is not None and not SHARE_GROUP_PATTERN.match(self.share_group):
            raise ConfigError(
                f"Invalid share group {self.share_group!r}: use 1 to 64 letters, digits, '_', '.' or '-'"
            )
        if not 0 <= self.session_expiry_s <= 0xFFFFFFFF:
            raise ConfigError(f"Invalid session expiry {self.session_expiry_s} s: use 0 to {0xFFFFFFFF}")
        if not 1 <= self.queue_size <= 65535:
            raise ConfigError(
                f"Invalid queue size {self.queue_size}: use 1 to 65535 (the MQTT Receive Maximum)"
            )
        if not self.batch_max_rows >= 1:
            raise ConfigError(f"Invalid batch size {self.batch_max_rows}: use at least 1")
        if self.password is not None and self.username is None:
            raise ConfigError("An MQTT password was given without a username: give --username too")
        for option, path in (("--ca-file", self.ca_file), ("--cert-file", self.cert_file), ("--key-file", self.key_file)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{option} {str(path)!r} is not a readable file: correct the path")
        if self.key_file is not None and self.cert_file is None:
            raise ConfigError("--key-file was given without --cert-file: give the client certificate too")

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.ca_file is not None or self.cert_file is not None

    @property
    def device_subscriptions(self) -> tuple[str, ...]:
        """Topic filters of the devices' status, counting and stats topics, never shared."""
        return tuple(f"{self.topic_prefix}/+/{topic.value}" for topic in DeviceTopic)

    @property
    def broker(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def subscription(self) -> str:
        """Topic filter subscribed to: the window topics of all devices, shared when a group is set."""
        topic_filter = window_subscription(self.topic_prefix)
        if self.share_group:
            return f"$share/{self.share_group}/{topic_filter}"
        return topic_filter


@dataclass(frozen=True, slots=True)
class IngestStats:
    """Counts since the ingest started.

    ``received`` counts every message: ``windows_received`` those on window topics, and
    ``device_messages_received`` the others (status, counting and stats messages, and
    messages on unknown topics). ``stored`` and ``duplicates`` count windows, and
    ``rejected`` counts messages of both kinds.
    """

    received: int
    windows_received: int
    device_messages_received: int
    stored: int
    duplicates: int
    rejected: int
    rejected_by_reason: dict[str, int]
    queued: int


class Ingest:
    """Receives window payloads from MQTT and validates and stores them with a ``BatchWriter``.

    ``start()`` returns once the subscription is active and raises ``BrokerError`` when
    the broker cannot be reached. ``stop()`` stores and acknowledges what was received,
    then disconnects. Both are called from one controlling thread.
    """

    def __init__(self, store: Store, settings: IngestSettings) -> None:
        self._store = store
        self._settings = settings
        self._rejections = RejectionLog(settings.reject_log_interval_s)
        self._writer = BatchWriter(
            store,
            self._prepare,
            self._acknowledge,
            self._rejections,
            max_rows=settings.batch_max_rows,
            max_delay_s=settings.batch_max_delay_s,
            queue_size=settings.queue_size,
        )
        self._client = BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=True,
        )
        self._client.connect_timeout = settings.connect_timeout_s
        _configure_credentials(self._client, settings)
        self._client.reconnect_delay_set(RECONNECT_MIN_DELAY_S, RECONNECT_MAX_DELAY_S)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        # Windows, status messages and retained messages arrive with QoS 1; the agents'
        # stats with QoS 0 take paho's ordinary path.
        self._client.on_qos1_publish = self._on_qos1_publish
        self._client.on_message = self._on_message

        self._subscribed = threading.Event()
        self._disconnected = threading.Event()
        self._start_error: str | None = None
        self._accepting = True
        self._stopping = False
        # Written only in paho's network thread. stats() reads them from any thread.
        self._windows_received = 0
        self._device_messages_received = 0
        # The receive time of the previous message, converted once for all messages of one read.
        self._received_at: tuple[float, datetime] = (0.0, datetime.now(UTC))

    @property
    def settings(self) -> IngestSettings:
        return self._settings

    @property
    def failure(self) -> str | None:
        """Reason the ingest cannot continue, or None while it runs."""
        return self._writer.failure

    def stats(self) -> IngestStats:
        """Return the counts since start; safe to call from any thread."""
        windows_received = self._windows_received
        device_messages_received = self._device_messages_received
        return IngestStats(
            received=windows_received + device_messages_received,
            windows_received=windows_received,
            device_messages_received=device_messages_received,
            stored=self._writer.stored,
            duplicates=self._writer.duplicates,
            rejected=self._rejections.total,
            rejected_by_reason=self._rejections.totals(),
            queued=self._writer.queued,
        )

    def start(self) -> None:
        """Connect, subscribe and start storing windows.

        Raises:
            BrokerError: the broker is unreachable, rejects the connection or the
                subscription, or does not respond within ``connect_timeout_s``.
        """
        settings = self._settings
        log.info(
            "Aggregator %s starting ingest from broker %s (subscription %s, client id %s) into %s",
            __version__,
            settings.broker,
            settings.subscription,
            settings.client_id,
            self._store.display_url,
        )
        self._writer.start()
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = settings.session_expiry_s
        properties.ReceiveMaximum = settings.queue_size
        try:
            self._client.connect(
                settings.host,
                settings.port,
                keepalive=settings.keepalive_s,
                clean_start=False,
                properties=properties,
            )
        except OSError as error:
            self._writer.stop()
            raise BrokerError(
                f"Cannot connect to the MQTT broker at {settings.broker}: {error.strerror or error}. "
                "Start the broker, or point --host and --port at a running one"
            ) from None

        self._client.loop_start()
        if not self._subscribed.wait(settings.connect_timeout_s):
            self._start_error = (
                f"The MQTT broker at {settings.broker} did not confirm the connection and subscription "
                f"within {settings.connect_timeout_s:.0f} s: check that it is an MQTT 5 broker"
            )
        if self._start_error is not None:
            self._abort_start()
            raise BrokerError(self._start_error)

    def stop(self) -> IngestStats:
        """Store and acknowledge what was received, disconnect, and return the totals.

        Messages that arrive after the call are not acknowledged, so the broker keeps them
        for the next start. A second call only returns the totals.
        """
        if self._stopping:
            return self.stats()
        self._accepting = False
        flushed = self._writer.stop()
        self._stopping = True
        if self._client.disconnect() == mqtt.MQTT_ERR_SUCCESS:
            # Waiting for on_disconnect lets the network thread send the last acknowledgements,
            # which are queued before the DISCONNECT packet.
            self._disconnected.wait(DISCONNECT_TIMEOUT_S)
        self._client.loop_stop()
        stats = self.stats()
        reasons = ", ".join(f"{reason}: {count}" for reason, count in stats.rejected_by_reason.items())
        log.info(
            "Stopped ingest: windows received %d, stored %d, duplicates %d; device messages received %d; "
            "messages rejected %d%s%s",
            stats.windows_received,
            stats.stored,
            stats.duplicates,
            stats.device_messages_received,
            stats.rejected,
            f" ({reasons})" if reasons else "",
            "" if flushed else f"; {self._writer.unstored} windows not stored will be redelivered",
        )
        return stats

    def _abort_start(self) -> None:
        self._accepting = False
        self._stopping = True
        self._writer.stop()
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        settings = self._settings
        if reason_code.is_failure:
            message = (
                f"The MQTT broker at {settings.broker} rejected the connection of client id "
                f"{settings.client_id!r} (user {settings.username or '(anonymous)'}, "
                f"TLS {'on' if settings.uses_tls else 'off'}): {reason_code}. Check the client id, "
                "--username and the password, and the broker's access settings"
            )
            if not self._subscribed.is_set():
                self._start_error = message
                self._subscribed.set()
            else:
                log.error("%s; retrying", message)
            return
        log.info(
            "Connected to MQTT broker %s as %s (session present: %s)",
            settings.broker,
            settings.client_id,
            flags.session_present,
        )
        # Subscribing on every connect restores the subscription if the broker lost the session.
        topics = [settings.subscription, *settings.device_subscriptions]
        client.subscribe([(topic, SubscribeOptions(qos=1)) for topic in topics])

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        settings = self._settings
        failures = [code for code in reason_codes if code.is_failure]
        if failures:
            message = (
                f"The MQTT broker at {settings.broker} rejected a subscription of {settings.subscription}, "
                f"{', '.join(settings.device_subscriptions)}: "
                f"{failures[0]}. Check the broker's ACL for client id {settings.client_id!r}"
            )
            if not self._subscribed.is_set():
                self._start_error = message
                self._subscribed.set()
            else:
                log.error(message)
            return
        granted_qos = reason_codes[0].value if reason_codes else 0
        if granted_qos < 1:
            log.warning(
                "The broker granted QoS %d for %s: windows can be lost while the aggregator is down",
                granted_qos,
                settings.subscription,
            )
        log.info("Subscribed to %s with QoS %d", settings.subscription, granted_qos)
        self._subscribed.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._stopping:
            log.info("Disconnected from MQTT broker %s", self._settings.broker)
            self._disconnected.set()
            return
        # A broker drops the older of two connections with one client id, so two
        # aggregators sharing an id disconnect each other in turn.
        log.warning(
            "Lost the connection to MQTT broker %s as client id %r (%s); reconnecting every %d to %d s. "
            "If this repeats, check that no other aggregator uses the same --client-id",
            self._settings.broker,
            self._settings.client_id,
            reason_code,
            RECONNECT_MIN_DELAY_S,
            RECONNECT_MAX_DELAY_S,
        )

    def _on_qos1_publish(self, topic: bytes, payload: bytes, mid: int, connection: int) -> None:
        # Runs in paho's network thread for every window: everything else happens in the writer.
        if not self._accepting:
            return
        self._count_received(topic)
        self._writer.put(InboundMessage(topic, payload, mid, 1, connection, self._client.received_at_s))

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        # QoS 0 messages, and any message that BufferedClient leaves to paho's own decoder.
        if not self._accepting:
            return
        try:
            topic = message.topic.encode()
        except UnicodeDecodeError:
            # _prepare rejects every topic that is not UTF-8 alike.
            topic = b"\xff"
        self._count_received(topic)
        client = self._client
        inbound = InboundMessage(
            topic,
            message.payload,
            message.mid,
            message.qos,
            client.connection_number,
            client.received_at_s,
            bool(message.retain),
        )
        self._writer.put(inbound)

    def _count_received(self, topic: bytes) -> None:
        if topic.endswith(b"/window"):
            self._windows_received += 1
        else:
            self._device_messages_received += 1

    def _prepare(self, message: InboundMessage) -> ReceivedWindow | DeviceEvent | None:
        """Return the window or device event in a message, or record why it is rejected and return None."""
        received_at_s, received_at = self._received_at
        if message.received_at_s != received_at_s:
            received_at = datetime.fromtimestamp(message.received_at_s, UTC)
            self._received_at = (message.received_at_s, received_at)
        try:
            topic = message.topic.decode("utf-8")
        except UnicodeDecodeError:
            self._rejections.record(
                RejectReason.TOPIC_MISMATCH, "(topic that is not valid UTF-8)", "topic is not valid UTF-8"
            )
            return None
        if topic.endswith("/window"):
            return self._validate(topic, message.payload, received_at)
        return self._validate_device_message(topic, message.payload, received_at, message.retained)

    def _validate_device_message(
        self, topic: str, payload: bytes, received_at: datetime, retained: bool = False
    ) -> DeviceEvent | None:
        """Return the status, counting or stats event, or record why the message is rejected and return None."""
        prefix = self._settings.topic_prefix + "/"
        parts = topic[len(prefix) :].split("/") if topic.startswith(prefix) else []
        if len(parts) != 2 or parts[1] not in tuple(DeviceTopic):
            self._rejections.record(
                RejectReason.TOPIC_MISMATCH, topic, "not a window, status, counting or stats topic"
            )
            return None
        device_id, kind = parts[0], DeviceTopic(parts[1])
        if not DEVICE_ID_PATTERN.match(device_id):
            self._rejections.record(RejectReason.TOPIC_MISMATCH, topic, f"invalid device id {device_id!r}")
            return None
        try:
            text = parse_device_message(kind, payload)
        except ValueError as error:
            self._rejections.record(RejectReason.INVALID_DEVICE_MESSAGE, topic, str(error))
            return None
        return DeviceEvent(device_id=device_id, topic=kind, text=text, received_at=received_at, retained=retained)

    def _validate(self, topic: str, payload: bytes, received_at: datetime) -> ReceivedWindow | None:
        """Return the parsed window, or record why the message is rejected and return None."""
        if len(payload) > MAX_PAYLOAD_BYTES:
            self._rejections.record(
                RejectReason.TOO_LARGE,
                topic,
                f"payload is {len(payload)} bytes, the limit is {MAX_PAYLOAD_BYTES}",
            )
            return None
        try:
            report = parse_window(payload)
        except PayloadError as error:
            self._rejections.record(classify_payload_error(error), topic, str(error))
            return None
        topic_device_id = device_id_in_topic(topic, self._settings.topic_prefix)
        if topic_device_id != report.device_id:
            self._rejections.record(
                RejectReason.TOPIC_MISMATCH,
                topic,
                f"payload device_id {report.device_id!r} does not match the topic's device id "
                f"{topic_device_id!r}: fix the agent's device_id or its topic",
            )
            return None
        return ReceivedWindow(report=report, received_at=received_at)

    def _acknowledge(self, messages: Sequence[InboundMessage]) -> None:
        # After a reconnect the broker redelivers an unacknowledged message under its old
        # packet id, and that copy is acknowledged when it is stored. A second PUBACK for the
        # id from the old delivery could acknowledge a newer message that reuses the id before
        # it is stored, so ack_many drops the ids of an earlier connection.
        by_connection: dict[int, list[int]] = {}
        for message in messages:
            if message.qos > 0:
                by_connection.setdefault(message.connection, []).append(message.mid)
        for connection, mids in by_connection.items():
            self._client.ack_many(mids, connection)


def _configure_credentials(client: mqtt.Client, settings: IngestSettings) -> None:
    """Set the username, password and TLS options of the client.

    Raises:
        ConfigError: a certificate or key file cannot be loaded.
    """
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    if not settings.uses_tls:
        return
    try:
        client.tls_set(
            ca_certs=str(settings.ca_file) if settings.ca_file else None,
            certfile=str(settings.cert_file) if settings.cert_file else None,
            keyfile=str(settings.key_file) if settings.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    except (ssl.SSLError, OSError) as error:
        raise ConfigError(
            f"Cannot load the TLS files (CA {settings.ca_file}, certificate {settings.cert_file}, "
            f"key {settings.key_file}): {error}. Give PEM files that match each other"
        ) from None


def device_id_in_topic(topic: str, prefix: str) -> str | None:
    """Return the device id of a ``{prefix}/{device_id}/window`` topic, or None for any other topic."""
    head = prefix + "/"
    tail = "/window"
    if not topic.startswith(head) or not topic.endswith(tail):
        return None
    device_id = topic[len(head) : -len(tail)]
    if not device_id or "/" in device_id:
        return None
    return device_id


def classify_payload_error(error: PayloadError) -> RejectReason:
    """Map a parse error to a rejection reason by the message prefixes of ``edge_agent.payload``."""
    # TODO: match on a reason attribute once PayloadError has one. Until then a reworded
    # message in edge_agent.payload falls back to INVALID_FIELDS.
    text = str(error)
    if text.startswith(("payload is not UTF-8 JSON", "payload must be a JSON object")):
        return RejectReason.NOT_JSON
    if text.startswith("unsupported schema_version"):
        return RejectReason.SCHEMA_VERSION
    return RejectReason.INVALID_FIELDS
