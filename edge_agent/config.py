"""Configuration of the edge agent, read from TOML and validated with pydantic.

Unknown keys are rejected, numbers have bounds, and relative paths are resolved
against the directory of the config file, so a config can be moved together with
the files it names. ``load_config`` turns every problem into one ``ConfigError``
that lists each bad key with its value and the fix.
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_agent.errors import ConfigError
from edge_agent.payload import DEFAULT_TOPIC_PREFIX, DEVICE_ID_PATTERN

MODELS_DIR = Path(__file__).parent / "models"
DEFAULT_EMOTION_MODEL = MODELS_DIR / "emotion_mini_xception_int8.tflite"
DEFAULT_BLAZEFACE_MODEL = MODELS_DIR / "face_detection_full_range.tflite"
DEFAULT_HAAR_CASCADE = MODELS_DIR / "haarcascade_frontalface_default.xml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Section):
    """Frame source and sampling rate."""

    kind: Literal["video", "images", "camera", "picamera2"] = Field(
        default="camera",
        description="video: a file replayed on its own timeline; images: a folder of photos; "
        "camera: an OpenCV device index or stream URL; picamera2: the Raspberry Pi camera.",
    )
    uri: str = Field(
        default="0",
        min_length=1,
        description="File or folder path (video, images), device index or rtsp/http URL (camera).",
    )
    sample_fps: float = Field(default=2.0, gt=0, le=120, description="Frames analysed per second of source time.")
    start: AwareDatetime | None = Field(
        default=None,
        description="Wall-clock time of the first frame of a video or image folder, with a UTC offset. "
        "Default: the file's modification time minus its duration.",
    )
    image_interval_s: float = Field(
        default=1.0, gt=0, le=3600, description="Source time between two photos of an image folder."
    )
    width: int | None = Field(default=None, ge=16, le=7680, description="Requested camera width in pixels.")
    height: int | None = Field(default=None, ge=16, le=4320, description="Requested camera height in pixels.")


class DetectorConfig(_Section):
    """Face detection backend and the smallest face it must find."""

    backend: Literal["blazeface", "haar"] = Field(
        default="blazeface", description="blazeface: MediaPipe full-range TFLite model; haar: OpenCV cascade."
    )
    model: Path | None = Field(default=None, description="Model file; default: the one bundled for the backend.")
    min_face_px: int = Field(
        default=20, ge=8, le=1024, description="Width in frame pixels of the smallest face to detect."
    )
    score_threshold: float = Field(default=0.6, gt=0, lt=1, description="Minimum detection confidence.")
    nms_iou: float = Field(default=0.3, gt=0, lt=1, description="IoU above which two boxes are one face.")
    threads: int = Field(default=1, ge=1, le=16, description="Interpreter threads.")


class ClassifierConfig(_Section):
    """Emotion model; its card (same path, ``.json``) gives labels, input size and preprocessing."""

    model: Path = Field(default=DEFAULT_EMOTION_MODEL, description="Fully int8 .tflite emotion model.")
    threads: int = Field(default=1, ge=1, le=16, description="Interpreter threads.")


class WindowConfig(_Section):
    """Time windows and the suppression of small groups."""

    length_s: float = Field(default=10.0, ge=1, le=3600, description="Window length in seconds.")
    min_faces: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Windows whose median number of faces per frame is below this are published "
        "as suppressed, without counts.",
    )


class MqttConfig(_Section):
    """Broker connection."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    topic_prefix: str = Field(default=DEFAULT_TOPIC_PREFIX, pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
    publish_timeout_s: float = Field(default=10.0, gt=0, le=300, description="Wait for PUBACK at shutdown.")


class AgentConfig(_Section):
    """Whole agent configuration."""

    device_id: Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
    room: Annotated[str, Field(min_length=1, max_length=64)]
    source: SourceConfig = SourceConfig()
    detector: DetectorConfig = DetectorConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    window: WindowConfig = WindowConfig()
    mqtt: MqttConfig = MqttConfig()

    @field_validator("room")
    @classmethod
    def _room_is_printable(cls, room: str) -> str:
        if not room.isprintable() or room != room.strip():
            raise ValueError("room must be printable text without leading or trailing spaces")
        return room


_FIXES = {
    "extra_forbidden": "remove it or check its spelling",
    "missing": "add it",
    "literal_error": "use one of the listed values",
    "string_pattern_mismatch": "use letters, digits, '_', '.' or '-' only",
    "timezone_aware": "add a UTC offset, for example 2026-03-02T08:15:00+01:00",
}


def format_validation_error(error: ValidationError, source: str) -> str:
    """Return one line per invalid key: key, value, problem and fix."""
    lines = [f"{source}: {error.error_count()} invalid setting(s)"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        value = item.get("input")
        shown = "(not set)" if item["type"] == "missing" else repr(value)
        fix = _FIXES.get(item["type"], "")
        line = f"  {key} = {shown}: {item['msg']}"
        lines.append(f"{line}; {fix}" if fix else line)
    return "\n".join(lines)


def load_config(path: Path, overrides: dict | None = None) -> AgentConfig:
    """Read, merge ``overrides`` (section -> key -> value) into, and validate a TOML config.

    Raises:
        ConfigError: the file is missing, not TOML, or has invalid settings.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"Cannot read config file {path}: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None

    for section, values in (overrides or {}).items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values

    _resolve_paths(data, path.parent)
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, str(path))) from None


def _resolve_paths(data: dict, base: Path) -> None:
    for section, key in (("detector", "model"), ("classifier", "model")):
        value = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
        if isinstance(value, str) and value and not Path(value).is_absolute():
            data[section][key] = str(base / value)
    source = data.get("source")
    if isinstance(source, dict) and source.get("kind") in ("video", "images"):
        uri = source.get("uri")
        if isinstance(uri, str) and uri and not Path(uri).is_absolute():
            source["uri"] = str(base / uri)


def utc_now() -> datetime:
    return datetime.now(UTC)
