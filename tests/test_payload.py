import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from edge_agent.payload import (
    FER2013_LABELS,
    SCHEMA_VERSION,
    PayloadError,
    WindowReport,
    json_schema,
    parse_window,
    window_subscription,
    window_topic,
)

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def make_report(**changes) -> WindowReport:
    fields = dict(
        device_id="pi-101",
        room="101",
        window_start=START,
        window_end=START + timedelta(seconds=10),
        frames_sampled=20,
        faces_seen=3,
        min_faces=1,
        suppressed=False,
        counts={"happy": 2, "neutral": 1},
    )
    fields.update(changes)
    return WindowReport(**fields)


def test_round_trip_keeps_every_field():
    report = make_report()
    parsed = parse_window(report.to_json())
    assert parsed == report


def test_times_serialize_as_utc_with_z():
    offset = timezone(timedelta(hours=1))
    report = make_report(
        window_start=datetime(2026, 3, 2, 9, 0, tzinfo=offset),
        window_end=datetime(2026, 3, 2, 9, 0, 10, tzinfo=offset),
    )
    data = json.loads(report.to_json())
    assert data["window_start"] == "2026-03-02T08:00:00.000000Z"
    assert data["window_end"] == "2026-03-02T08:00:10.000000Z"


def test_suppressed_window_has_no_counts():
    report = make_report(suppressed=True, counts=None)
    assert json.loads(report.to_json())["counts"] is None
    with pytest.raises(ValueError, match="suppressed window must have counts = null"):
        make_report(suppressed=True)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"schema_version": 2}', "unsupported schema_version 2"),
        (b"x" * 20000, "limit is 16384"),
    ],
)
def test_parse_rejects_malformed_bytes(payload, message):
    with pytest.raises(PayloadError, match=message):
        parse_window(payload)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"counts": {"happy": 5}}, "counts sum to 5 but faces_seen is 3"),
        ({"device_id": "pi/101"}, "device_id"),
        ({"window_end": "2026-03-02T08:00:00Z"}, "is not after window_start"),
        ({"window_end": "2026-03-02T09:00:00.5Z"}, "windows must last 1 to 3600 s"),
        ({"counts": {"Happy!": 3}}, "invalid label"),
        ({"counts": {"happy": -1, "sad": 4}}, "negative"),
        ({"extra": 1}, "extra"),
        ({"window_start": "2026-03-02T08:00:00"}, "timezone"),
    ],
)
def test_parse_rejects_invalid_fields(change, message):
    data = json.loads(make_report().to_json())
    data.update(change)
    with pytest.raises(PayloadError, match=message):
        parse_window(json.dumps(data).encode())


def test_topics_and_schema():
    assert window_topic("classroom", "pi-101") == "classroom/pi-101/window"
    assert window_subscription("classroom") == "classroom/+/window"
    schema = json_schema()
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    assert "counts" in schema["required"]
    assert "schema_version" in schema["required"]
    assert "sum to faces_seen" in schema["description"]
    assert len(FER2013_LABELS) == 7
