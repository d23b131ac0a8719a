"""BufferedClient's socket wrapper and PUBLISH splitting; the ingest tests run it against Mosquitto."""

from __future__ import annotations

import socket
import struct

import pytest

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from aggregator.mqtt_client import READ_SIZE, BufferedSocket, _split_qos1_publish


def publish_body(topic: bytes, mid: int, properties: bytes, payload: bytes) -> bytes:
    """Variable header and payload of an MQTT 5 PUBLISH, as after its fixed header."""
    return struct.pack("!H", len(topic)) + topic + struct.pack("!H", mid) + properties + payload


def test_split_without_properties() -> None:
    body = publish_body(b"classroom/cam-1/window", 7, b"\x00", b'{"a": 1}')

    assert _split_qos1_publish(body) == (b"classroom/cam-1/window", 7, b'{"a": 1}')


def test_split_skips_long_properties() -> None:
    # A user property longer than 127 bytes needs two bytes of properties length.
    name, value = b"note", b"x" * 200
    user_property = b"\x26" + struct.pack("!H", len(name)) + name + struct.pack("!H", len(value)) + value
    length = len(user_property)
    assert length > 127
    encoded_length = bytes([length & 0x7F | 0x80, length >> 7])
    body = publish_body(b"t/1", 65535, encoded_length + user_property, b"payload")

    assert _split_qos1_publish(body) == (b"t/1", 65535, b"payload")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x00",
        # Empty topic: the broker used a topic alias, which paho resolves.
        publish_body(b"", 1, b"\x00", b"{}"),
        # Topic length beyond the packet.
        b"\x00\x50abc",
        # Packet id 0 is invalid for QoS 1.
        publish_body(b"t", 0, b"\x00", b"{}"),
        # Properties length beyond the packet.
        publish_body(b"t", 1, b"\x10", b"{}"),
        # Properties length with a continuation bit and no next byte.
        publish_body(b"t", 1, b"\x80", b""),
    ],
    ids=[
        "empty",
        "short",
        "topic-alias",
        "topic-too-long",
        "mid-zero",
        "properties-too-long",
        "truncated-length",
    ],
)
def test_split_leaves_odd_packets_to_paho(body: bytes) -> None:
    assert _split_qos1_publish(body) is None


def test_buffered_socket_serves_small_reads_from_one_recv() -> None:
    left, right = socket.socketpair()
    try:
        right.setblocking(False)
        wrapped = BufferedSocket(right)
        left.sendall(b"\x30\x05hello\x30\x03abc")

        assert wrapped.recv(1) == b"\x30"
        # Everything sent is read by the first recv and waits in the buffer.
        assert wrapped.pending() == 11
        assert wrapped.recv(1) == b"\x05"
        assert wrapped.recv(5) == b"hello"
        assert wrapped.recv(100) == b"\x30\x03abc"
        assert wrapped.pending() == 0
        assert wrapped.received_at_s > 0
        with pytest.raises(BlockingIOError):
            wrapped.recv(1)

        left.close()
        assert wrapped.recv(1) == b""
    finally:
        left.close()
        right.close()


def test_buffered_socket_reads_at_most_read_size() -> None:
    left, right = socket.socketpair()
    try:
        right.setblocking(False)
        wrapped = BufferedSocket(right)
        left.sendall(b"x" * (READ_SIZE + 10))

        assert len(wrapped.recv(READ_SIZE + 10)) <= READ_SIZE
    finally:
        left.close()
        right.close()


def test_other_paho_version_fails(monkeypatch):
    from aggregator import mqtt_client

    monkeypatch.setattr(mqtt_client, "PAHO_PRIVATE_NAMES", (*mqtt_client.PAHO_PRIVATE_NAMES, "_gone_in_paho_3"))
    with pytest.raises(RuntimeError, match=r"lacks _gone_in_paho_3.*install the tested version"):
        mqtt_client.BufferedClient(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
