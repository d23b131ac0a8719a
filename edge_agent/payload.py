"""The MQTT payload that an edge agent publishes once per time window.

This module is the contract between the agent and the aggregator, and both import it.
It depends on pydantic only, so the aggregator can use it without the agent's
camera and inference packages.

A payload contains aggregate numbers for one device and one window: how many frames were
sampled, how many face detections they held in total, and how many of those detections
the classifier put in each emotion class. It never holds anything about an individual
face: no image, crop, box, score or identity. When the window saw fewer people than
the configured minimum, ``suppressed`` is true and ``counts`` is null.

Topic layout: ``{prefix}/{device_id}/window`` (QoS 1, not retained). The default
prefix is ``classroom``.

Versioning: ``schema_version`` is 1. A change that removes or renames a field, or
changes its meaning, increments it. The aggregator rejects versions it does not know.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, model_validator

SCHEMA_VERSION = 1

#: FER2013 class order. A model card may list other labels, and payloads carry the
#: card's labels as ``counts`` keys.
FER2013_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

DEFAULT_TOPIC_PREFIX = "classroom"

# Device ids appear in MQTT topics and broker ACLs, so they exclude '/', '+', '#' and spaces.
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
LABEL_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_PAYLOAD_BYTES = 16 * 1024
# The agent's window length is bounded to 1 s .. 1 h in its config.
MIN_WINDOW_S = 1.0
MAX_WINDOW_S = 3600.0
# An upper bound on face detections per analysed frame, far above any classroom. It
# rejects counts that no camera frame can have produced.
MAX_FACES_PER_FRAME = 1000


class PayloadError(ValueError):
    """Raised when bytes received from MQTT are not a valid window payload."""


class WindowReport(BaseModel):
    """Aggregate emotion counts of one device over one time window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    device_id: str = Field(pattern=DEVICE_ID_PATTERN, description="Agent id, unique in the fleet.")
    room: str = Field(min_length=1, max_length=64, description="Room the camera watches.")
    window_start: AwareDatetime = Field(description="Start of the window, UTC, inclusive.")
    window_end: AwareDatetime = Field(description="End of the window, UTC, exclusive.")
    # Strict: JSON true or 2.0 is not a count.
    frames_sampled: StrictInt = Field(ge=0, le=1_000_000, description="Frames analysed in the window.")
    faces_seen: StrictInt = Field(ge=0, le=100_000_000, description="Face detections summed over frames.")
    min_faces: StrictInt = Field(ge=1, le=1000, description="Suppression threshold in force on the agent.")
    suppressed: bool = Field(description="True when the median number of faces per frame was below min_faces.")
    counts: dict[str, StrictInt] | None = Field(
        description="Face detections per emotion label; null when suppressed. Sums to faces_seen."
    )

    # One model validator contains every check that constraints cannot express. Each call
    # from pydantic-core into Python costs about 1 us, a third of what all the constraints
    # cost together, and the aggregator validates every window it receives.
    @model_validator(mode="after")
    def _check_consistency(self) -> WindowReport:
        room = self.room
        if not room.isprintable() or room != room.strip():
            raise ValueError("room must be printable text without leading or trailing spaces")
        # The model is frozen, so the UTC times replace the parsed ones through object.__setattr__.
        object.__setattr__(self, "window_start", _to_utc("window_start", self.window_start))
        object.__setattr__(self, "window_end", _to_utc("window_end", self.window_end))
        counts = self.counts
        if counts is not None:
            _check_counts(counts)
        if self.window_end <= self.window_start:
            raise ValueError(f"window_end {self.window_end} is not after window_start {self.window_start}")
        length_s = (self.window_end - self.window_start).total_seconds()
        if not MIN_WINDOW_S <= length_s <= MAX_WINDOW_S:
            raise ValueError(f"window is {length_s:g} s long; windows must last {MIN_WINDOW_S:g} to {MAX_WINDOW_S:g} s")
        if self.faces_seen > self.frames_sampled * MAX_FACES_PER_FRAME:
            raise ValueError(
                f"faces_seen {self.faces_seen} is more than {MAX_FACES_PER_FRAME} per frame over "
                f"frames_sampled {self.frames_sampled}"
            )
        if self.suppressed and counts is not None:
            raise ValueError("a suppressed window must have counts = null")
        if not self.suppressed:
            if counts is None:
                raise ValueError("counts is null but suppressed is false")
            total = sum(counts.values())
            if total != self.faces_seen:
                raise ValueError(f"counts sum to {total} but faces_seen is {self.faces_seen}")
        return self

    def to_json(self) -> bytes:
        """Serialize to the UTF-8 JSON sent over MQTT, with UTC times ending in 'Z'."""
        data = self.model_dump(mode="json")
        for key in ("window_start", "window_end"):
            data[key] = getattr(self, key).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return json.dumps(data, separators=(",", ":")).encode()


def parse_window(payload: bytes) -> WindowReport:
    """Parse and validate one MQTT payload.

    Raises:
        PayloadError: the bytes are too large, not UTF-8 JSON, of an unknown schema
            version, or fail validation. The message names the cause.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload is {len(payload)} bytes, the limit is {MAX_PAYLOAD_BYTES}")
    # pydantic-core parses the JSON in Rust and builds no intermediate dict, which is
    # faster than json.loads followed by model_validate. It accepts a subset of what
    # _parse_window_checked accepts, with equal results (tests/test_payload.py compares
    # both on generated payloads). The exception is a payload without schema_version,
    # which the model's default would fill in. Every payload that the fast path does not
    # return goes through the checked path, so the accepted set and the error messages
    # are those of the checked path.
    try:
        report = WindowReport.model_validate_json(payload)
    except ValueError:
        pass
    else:
        if "schema_version" in report.model_fields_set:
            return report
    return _parse_window_checked(payload)


def _parse_window_checked(payload: bytes) -> WindowReport:
    """Parse with json.loads, check the schema version, then validate, naming the first failing step."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PayloadError(f"payload is not UTF-8 JSON: {error}") from None
    except RecursionError:
        raise PayloadError("payload is not UTF-8 JSON: it nests arrays or objects too deeply") from None
    if not isinstance(data, dict):
        raise PayloadError(f"payload must be a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise PayloadError(
            f"unsupported schema_version {version!r}: this aggregator reads version {SCHEMA_VERSION}; "
            "upgrade the aggregator or the agent so both use the same version"
        )
    try:
        return WindowReport.model_validate(data)
    except ValueError as error:
        raise PayloadError(_summarize_validation_error(error)) from None


def _to_utc(name: str, moment: datetime) -> datetime:
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        # A time near year 1 or 9999 whose offset moves it outside the datetime range.
        raise ValueError(f"{name} {moment.isoformat()} is outside the range of UTC times") from None


# Labels that matched LABEL_PATTERN, so that the same few labels of every window are checked
# by one set operation. Capped, so that a sender of ever new labels cannot grow it.
_VALID_LABELS: set[str] = set()
_VALID_LABELS_MAX = 1024


def _check_counts(counts: dict[str, int]) -> None:
    if not 1 <= len(counts) <= 32:
        raise ValueError(f"counts must have 1 to 32 labels, got {len(counts)}")
    if not counts.keys() <= _VALID_LABELS:
        for label in counts:
            if not LABEL_PATTERN.match(label):
                raise ValueError(f"invalid label {label!r}: use lowercase letters, digits and '_'")
        if len(_VALID_LABELS) < _VALID_LABELS_MAX:
            _VALID_LABELS.update(counts)
    if min(counts.values()) < 0:
        for label, count in counts.items():
            if count < 0:
                raise ValueError(f"count of {label!r} is negative: {count}")


def _summarize_validation_error(error: ValueError) -> str:
    errors = getattr(error, "errors", None)
    if errors is None:
        return str(error)
    parts = []
    for item in errors():
        location = ".".join(str(part) for part in item["loc"]) or "payload"
        parts.append(f"{location}: {item['msg']}")
    return "invalid payload: " + "; ".join(parts)


def window_topic(prefix: str, device_id: str) -> str:
    """Return the topic a device publishes its windows on."""
    return f"{prefix}/{device_id}/window"


def window_subscription(prefix: str) -> str:
    """Return the topic filter that matches the windows of every device."""
    return f"{prefix}/+/window"


def json_schema() -> dict:
    """Return the JSON Schema of the payload, for documentation and for other consumers.

    The schema covers the fields and their bounds. The rules that relate fields to each
    other are in its description, because JSON Schema cannot express them all.
    """
    schema = WindowReport.model_json_schema()
    # The model gives schema_version a default for the agent's convenience, but a payload
    # without it is rejected by ``parse_window``.
    schema["required"] = ["schema_version", *schema.get("required", [])]
    schema["description"] = (
        "Aggregate emotion counts of one device over one time window. Also enforced: "
        "window_end is after window_start and the window lasts 1 to 3600 s; "
        "counts is null exactly when suppressed is true; otherwise its values are "
        "non-negative, its keys match ^[a-z][a-z0-9_]{0,31}$, and they sum to faces_seen."
    )
    return schema
