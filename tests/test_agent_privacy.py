"""No pixels leave the agent: a whole run's MQTT traffic, outbox file, state folder and log are scanned."""

from __future__ import annotations

import base64
import re
import sqlite3

import pytest

from edge_agent.payload import parse_window
from edge_agent.stats import parse_stats
from tests.agent_process import DEVICE_ID, Recorder, start_agent, wait_until, write_live_config

pytestmark = pytest.mark.slow

# Magic numbers of image formats OpenCV writes (BMP's two-byte "BM" is left out: too likely by
# chance in a binary SQLite page), and of numpy's .npy format.
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"RIFF", b"II*\x00", b"MM\x00*", b"\x93NUMPY")
# A base64 run this long could carry a small thumbnail; no field of any message is that long.
BASE64_RUN = re.compile(rb"[A-Za-z0-9+/=]{200,}")
# Keys of a face box or crop, which no payload may contain.
FACE_KEYS = re.compile(rb'"(x|y|width|height|box|boxes|bbox|crop|image|pixels|score|scores)"')


def assert_no_image(data: bytes, where: str) -> None:
    for signature in IMAGE_SIGNATURES:
        assert signature not in data, f"{where} contains the image signature {signature!r}"
    assert not BASE64_RUN.search(data), f"{where} contains a long base64 run"
    assert not FACE_KEYS.search(data), f"{where} contains a face box or image key"


def test_run_publishes_and_stores_no_pixels(tmp_path, mqtt_broker):
    recorder = Recorder(mqtt_broker.host, mqtt_broker.port, "#").start()
    agent = start_agent(write_live_config(tmp_path, mqtt_broker.port), tmp_path)
    try:
        wait_until(lambda: len(recorder.payloads("window")) >= 3, 60, "three windows", agent)
        wait_until(lambda: len(recorder.payloads("stats")) >= 1, 30, "a stats message", agent)
        # Leave windows in the outbox file too: only a SIGKILL keeps them there.
        agent.kill()
    finally:
        agent.kill()
        recorder.stop()

    messages = recorder.all()
    assert messages
    for message in messages:
        where = f"message on {message.topic}"
        assert message.topic.startswith(f"classroom/{DEVICE_ID}/"), where
        assert len(message.payload) < 4096, where
        assert_no_image(message.payload, where)
        kind = message.topic.rsplit("/", 1)[1]
        if kind == "window":
            assert parse_window(message.payload).device_id == DEVICE_ID
        elif kind == "stats":
            assert parse_stats(message.payload).device_id == DEVICE_ID
        else:
            assert message.payload in (b"online", b"offline", b"stopped", b"active", b"paused"), where

    state_files = sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("outbox"))
    assert state_files[0] == "outbox.sqlite3"
    assert set(state_files) <= {"outbox.sqlite3", "outbox.sqlite3-wal", "outbox.sqlite3-shm"}
    for name in state_files:
        assert_no_image((tmp_path / name).read_bytes(), name)
    with sqlite3.connect(tmp_path / "outbox.sqlite3") as db:
        for (payload,) in db.execute("SELECT payload FROM windows"):
            parse_window(payload)
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables <= {"windows", "counters", "state", "sqlite_sequence"}

    log_bytes = agent.log_path.read_bytes()
    assert_no_image(log_bytes, "agent log")
    assert b"array(" not in log_bytes


def test_scanner_finds_an_encoded_image():
    import cv2
    import numpy as np

    ok, jpeg = cv2.imencode(".jpg", np.zeros((32, 32, 3), np.uint8))
    assert ok
    with pytest.raises(AssertionError):
        assert_no_image(b'{"n":1,' + jpeg.tobytes() + b"}", "jpeg")
    with pytest.raises(AssertionError):
        assert_no_image(base64.b64encode(jpeg.tobytes()), "base64")
    with pytest.raises(AssertionError):
        assert_no_image(b'{"boxes":[[1,2,3,4]]}', "boxes")
