"""A paho-mqtt client that reads the socket in large blocks and acknowledges in bulk.

paho-mqtt 2.2 reads each incoming packet with one ``select`` and three ``recv`` calls
(type byte, length bytes, rest), and it handles one packet per ``select``. It decodes
the MQTT 5 properties of every PUBLISH into a ``Properties`` object. It sends every
PUBACK as its own packet with its own ``send``, plus a wake-up byte from the thread that
queued it. At tens of thousands of small windows per second that was half of the
aggregator's CPU time. This client changes four things and leaves the rest of the
protocol to paho:

- ``_create_socket`` wraps each new connection's socket in ``BufferedSocket``, which
  serves paho's small reads from one ``recv`` of up to ``READ_SIZE`` bytes.
- ``loop_read`` handles every complete packet already in that buffer before paho's
  loop calls ``select`` again.
- With ``on_qos1_publish`` set, a QoS 1 PUBLISH goes to that callback as topic bytes,
  payload and packet id, without an ``MQTTMessage`` and without decoding properties.
- ``ack_many`` queues the PUBACKs of a whole batch as one write.

Connections are numbered. Each one gets a new ``BufferedSocket``, so bytes of a lost
connection are dropped with its socket and never read as part of the next. The broker
delivers the unacknowledged messages in them again. ``ack_many`` drops the packet ids of
an earlier connection: they would acknowledge whatever message the broker sent under the
same id on the new connection.

``_create_socket``, ``_handle_publish``, ``_in_packet``, ``_packet_queue``, ``_protocol``,
``_sock`` and ``_out_packet`` are private names of paho-mqtt 2.2 (constraints.txt pins
2.2.0). The ingest tests exercise each of them against a real Mosquitto, over TCP and TLS.
"""

from __future__ import annotations

import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion

# One recv of 64 KiB contains a few hundred window messages of about 300 bytes.
READ_SIZE = 64 * 1024

# PUBACK: packet type 4 with no flags, remaining length 2, the packet id. Without a reason
# code and properties, MQTT 5 reads it as "success", as MQTT 3.1.1 does.
_PUBACK = struct.Struct("!BBH")
_PUBACK_TYPE = 0x40
_PUBACK_REMAINING_LENGTH = 2
_PUBLISH_QOS1 = 0x02

#: Callback of a QoS 1 PUBLISH: topic as received (bytes, maybe not UTF-8), payload,
#: packet id, and the number of the connection it arrived on.
Qos1PublishCallback = Callable[[bytes, bytes, int, int], None]


class BufferedSocket:
    """A non-blocking socket whose reads are served from one large ``recv`` at a time.

    It has only the methods that paho-mqtt 2.2 calls on its socket. ``pending`` counts
    the buffered bytes, because paho's loop skips the wait in ``select`` while a socket
    reports pending bytes (paho added that for TLS, whose own buffer ``select`` cannot
    see either).
    """

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._data = b""
        self._position = 0
        self._tls = isinstance(sock, ssl.SSLSocket)
        # time.time() of the latest recv that returned data: when those bytes arrived.
        self.received_at_s = 0.0

    def recv(self, size: int) -> bytes:
        if self._position >= len(self._data):
            # Raises BlockingIOError (or an SSL want-read error) when no byte is there, as
            # the socket itself would, and returns b"" when the broker closed the connection.
            data = self._sock.recv(READ_SIZE)
            if not data:
                return data
            self._data = data
            self._position = 0
            self.received_at_s = time.time()
        start = self._position
        self._position = min(start + size, len(self._data))
        return self._data[start : self._position]

    def buffered(self) -> int:
        """Number of bytes read from the socket that paho has not taken yet."""
        return len(self._data) - self._position

    def pending(self) -> int:
        tls_pending = self._sock.pending() if self._tls else 0
        return self.buffered() + tls_pending

    def send(self, data: bytes | bytearray) -> int:
        return self._sock.send(data)

    def fileno(self) -> int:
        return self._sock.fileno()

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def close(self) -> None:
        self._data = b""
        self._position = 0
        self._sock.close()


# The private names of paho-mqtt that this client overrides or reads, checked at start so that
# another paho version fails at once with the fix instead of misbehaving under load.
PAHO_PRIVATE_NAMES = ("_create_socket", "_handle_publish", "_in_packet", "_out_packet", "_sock", "_packet_queue")
PAHO_TESTED_VERSION = "2.2.0"


class BufferedClient(mqtt.Client):
    """paho-mqtt client with buffered reads, a fast QoS 1 path and bulk acknowledgements.

    Use it with ``manual_ack=True``: QoS 1 messages that reach ``on_qos1_publish`` are
    acknowledged only through ``ack_many``. ``message_callback_add`` filters do not see
    those messages.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        missing = [name for name in PAHO_PRIVATE_NAMES if not hasattr(self, name)]
        if missing:
            raise RuntimeError(
                f"paho-mqtt {getattr(mqtt, '__version__', '?')} lacks {', '.join(missing)}, which the aggregator's "
                f"MQTT client builds on: install the tested version (pip install -c constraints.txt "
                f"'paho-mqtt=={PAHO_TESTED_VERSION}')"
            )
        self.on_qos1_publish: Qos1PublishCallback | None = None
        # Orders ack_many against the switch to a new connection.
        self._connection_lock = threading.Lock()
        self._connection_number = 0

    @property
    def connection_number(self) -> int:
        """Number of the current connection, from 1; it grows by one with every connect attempt."""
        return self._connection_number

    @property
    def received_at_s(self) -> float:
        """time.time() when the bytes of the packet being handled were read from the socket.

        Meaningful inside the message callbacks only.
        """
        sock = self._sock
        return sock.received_at_s if isinstance(sock, BufferedSocket) else time.time()

    def _create_socket(self) -> Any:
        # paho calls this from reconnect() after it emptied the queue of outgoing packets, and
        # queues CONNECT right after it returns. An ack_many that ran in between queued
        # acknowledgements of the old connection, which must not reach the new one. paho
        # sends its own PUBACKs only while it handles a PUBLISH, in this thread, never here.
        with self._connection_lock:
            self._connection_number += 1
            stale = [packet for packet in self._out_packet if packet["command"] == _PUBACK_TYPE]
            for packet in stale:
                self._out_packet.remove(packet)
        return BufferedSocket(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Handle incoming packets until the read buffer contains no complete packet."""
        rc = super().loop_read(max_packets)
        sock = self._sock
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and isinstance(sock, BufferedSocket) and sock.buffered():
            rc = super().loop_read(max_packets)
            if self._sock is not sock:
                break
        return rc

    def _handle_publish(self) -> MQTTErrorCode:
        callback = self.on_qos1_publish
        header = self._in_packet["command"]
        # A retained message goes to on_message, whose MQTTMessage carries the retain flag.
        # The aggregator subscribes without Retain As Published, so the broker sets the flag
        # only on stored copies that it sends for a new subscription.
        retained = header & 0x01
        if (
            callback is None
            or retained
            or header & 0x06 != _PUBLISH_QOS1
            or self._protocol != MQTTProtocolVersion.MQTTv5
        ):
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        parsed = _split_qos1_publish(packet)
        if parsed is None:
            # paho's decoder raises the MalformedPacket that closes the connection, or handles
            # the topic alias that this short path does not.
            return super()._handle_publish()
        topic, mid, payload = parsed
        callback(topic, payload, mid, self._connection_number)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_many(self, mids: Iterable[int], connection_number: int) -> int:
        """Queue one PUBACK per packet id, in one write, unless the connection was replaced.

        Return the number of acknowledgements queued: 0 when ``connection_number`` is not
        the current connection, whose broker then delivers those messages again.
        """
        packet = b"".join(_PUBACK.pack(_PUBACK_TYPE, _PUBACK_REMAINING_LENGTH, mid) for mid in mids)
        if not packet:
            return 0
        with self._connection_lock:
            if connection_number != self._connection_number:
                return 0
            # mid 0 and qos 0: no MQTTMessageInfo waits for this packet, as for paho's PINGREQ.
            self._packet_queue(_PUBACK_TYPE, packet, 0, 0)
        return len(packet) // _PUBACK.size


def _split_qos1_publish(packet: bytes | bytearray) -> tuple[bytes, int, bytes] | None:
    """Return topic, packet id and payload of an MQTT 5 QoS 1 PUBLISH after its fixed header.

    Return None when the topic is empty (a topic alias) or the lengths do not fit the packet.
    """
    size = len(packet)
    if size < 2:
        return None
    topic_end = 2 + ((packet[0] << 8) | packet[1])
    if topic_end == 2 or topic_end + 3 > size:
        return None
    mid = (packet[topic_end] << 8) | packet[topic_end + 1]
    # Properties length: a variable byte integer of at most 4 bytes, 7 bits per byte.
    position = topic_end + 2
    properties_length = 0
    shift = 0
    while True:
        if position >= size or shift > 21:
            return None
        byte = packet[position]
        position += 1
        properties_length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    payload_start = position + properties_length
    if payload_start > size or mid == 0:
        return None
    return bytes(packet[2:topic_end]), mid, bytes(packet[payload_start:])
