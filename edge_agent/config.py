"""Configuration of the edge agent, read from TOML and validated with pydantic.

Unknown keys are rejected, numbers have bounds, and relative paths are resolved
against the directory of the config file, so a config can be moved together with
the files it names. ``load_config`` turns every problem into one ``ConfigError``
that lists each bad key with its value and the fix.
"""

from __future__ import annotations

import os
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_agent.errors import ConfigError
from edge_agent.payload import DEFAULT_TOPIC_PREFIX, DEVICE_ID_PATTERN

MODELS_DIR = Path(__file__).parent / "models"
DEFAULT_EMOTION_MODEL = MODELS_DIR / "emotion_mini_xception_int8.tflite"
# The published float model, and the int8 copy that bench/detector_int8.py makes of it. The
# int8 copy is the default: it found the same faces in the detector benchmark with about 2/3
# of the CPU time and 20 MiB less memory at 1280x720.
BLAZEFACE_FLOAT_MODEL = MODELS_DIR / "face_detection_full_range.tflite"
DEFAULT_BLAZEFACE_MODEL = MODELS_DIR / "face_detection_full_range_int8.tflite"
DEFAULT_HAAR_CASCADE = MODELS_DIR / "haarcascade_frontalface_default.xml"
DEFAULT_MAX_FRAME_WIDTH_PX = 1920
DEFAULT_MAX_FRAME_HEIGHT_PX = 1080
DEFAULT_BUDGET_MIB = 256
# Bounds of the default camera frame rate. Most USB (UVC) cameras offer 5 frames/s and
# more. 30 is the usual maximum, and the rate most cameras run at when not asked.
MIN_DEFAULT_CAPTURE_FPS = 5.0
MAX_DEFAULT_CAPTURE_FPS = 30.0
# Window times are written with four-digit years and converted to UTC. A start far outside
# these years overflows or makes payloads that the aggregator rejects.
MIN_START_YEAR = 1970
MAX_START_YEAR = 9000


class _Section(BaseModel):
    # Strict: TOML values have types, and a quoted number or a boolean where a number
    # belongs is a mistake to report, not to convert. Paths and the start time, which
    # arrive as strings, opt out field by field.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


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
        strict=False,
        description="Wall-clock time of the first frame of a video or image folder, with a UTC offset. "
        "Default: the file's modification time minus its duration.",
    )
    image_interval_s: float = Field(
        default=1.0, gt=0, le=3600, description="Source time between two photos of an image folder."
    )
    width: int | None = Field(
        default=None,
        ge=16,
        le=7680,
        description="Requested camera width in pixels, and the largest frame width processed: wider frames "
        "are scaled down. Default: 1920.",
    )
    height: int | None = Field(
        default=None,
        ge=16,
        le=4320,
        description="Requested camera height in pixels, and the largest frame height processed. Default: 1080.",
    )
    capture_fps: float | None = Field(
        default=None,
        gt=0,
        le=120,
        description="Frame rate requested from a V4L2/USB camera or the Pi camera. Every captured frame is "
        "decoded or copied, sampled or not, so a rate near sample_fps saves CPU. Default: twice sample_fps, "
        "at least 5 and at most 30. Streams (rtsp, http) and files keep their own rate.",
    )
    pixel_format: Literal["RGB888", "BGR888", "XRGB8888", "XBGR8888"] = Field(
        default="RGB888",
        description="picamera2 main stream format. RGB888 and XRGB8888 arrive in BGR byte order; "
        "BGR888 and XBGR8888 in RGB order. The agent converts all four to BGR.",
    )
    on_loss: Literal["reconnect", "stop"] | None = Field(
        default=None,
        description="When the source fails or ends: reconnect with back-off, or stop the agent. "
        "Default: reconnect for camera and picamera2, stop for video and images.",
    )
    reconnect_min_s: float = Field(default=1.0, gt=0, le=600, description="First wait before reopening.")
    reconnect_max_s: float = Field(
        default=60.0, gt=0, le=3600, description="Longest wait between reopening attempts; waits double up to it."
    )

    @property
    def loss_policy(self) -> Literal["reconnect", "stop"]:
        if self.on_loss is not None:
            return self.on_loss
        return "reconnect" if self.kind in ("camera", "picamera2") else "stop"

    @property
    def camera_fps(self) -> float:
        """Frame rate to request from a camera: ``capture_fps``, or twice ``sample_fps`` within 5 to 30."""
        if self.capture_fps is not None:
            return self.capture_fps
        return min(MAX_DEFAULT_CAPTURE_FPS, max(MIN_DEFAULT_CAPTURE_FPS, 2 * self.sample_fps))

    @property
    def max_frame_px(self) -> tuple[int, int]:
        """Largest (width, height) the agent processes; the RAM budget counts frames of this size."""
        return (self.width or DEFAULT_MAX_FRAME_WIDTH_PX, self.height or DEFAULT_MAX_FRAME_HEIGHT_PX)

    @model_validator(mode="after")
    def _check_source(self) -> SourceConfig:
        if self.on_loss == "reconnect" and self.kind in ("video", "images"):
            raise ValueError(
                f"on_loss = 'reconnect' applies to live sources only; a {self.kind} source would replay its "
                "timeline again. Use kind = 'camera' for a stream, or on_loss = 'stop'"
            )
        if self.start is not None and not MIN_START_YEAR <= self.start.year <= MAX_START_YEAR:
            raise ValueError(
                f"start {self.start.isoformat()} is out of range: use a year from {MIN_START_YEAR} to {MAX_START_YEAR}"
            )
        if self.start is not None and self.kind in ("camera", "picamera2"):
            raise ValueError(
                f"start applies to recordings only (kind 'video' or 'images'); a {self.kind} source stamps frames "
                "with the current time. Remove start, or set kind to video or images"
            )
        if self.capture_fps is not None and self.kind in ("video", "images"):
            raise ValueError(
                f"capture_fps applies to cameras only; a {self.kind} source keeps its own rate. Remove capture_fps, "
                "or lower sample_fps to analyse fewer frames"
            )
        if self.capture_fps is not None and self.capture_fps < self.sample_fps:
            raise ValueError(
                f"capture_fps ({self.capture_fps}) is below sample_fps ({self.sample_fps}): the camera would "
                "deliver fewer frames than the agent samples. Raise capture_fps or lower sample_fps"
            )
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(
                f"reconnect_max_s ({self.reconnect_max_s}) is below reconnect_min_s ({self.reconnect_min_s})"
            )
        return self


class DetectorConfig(_Section):
    """Face detection backend and the smallest face it must find."""

    backend: Literal["blazeface", "haar"] = Field(
        default="blazeface", description="blazeface: MediaPipe full-range TFLite model; haar: OpenCV cascade."
    )
    model: Path | None = Field(
        default=None, strict=False, description="Model file; default: the one bundled for the backend."
    )
    min_face_px: int = Field(
        default=20, ge=8, le=1024, description="Width in frame pixels of the smallest face to detect."
    )
    score_threshold: float = Field(default=0.6, gt=0, lt=1, description="Minimum detection confidence.")
    nms_iou: float = Field(default=0.3, gt=0, lt=1, description="IoU above which two boxes are one face.")
    threads: int = Field(default=1, ge=1, le=16, description="Interpreter threads.")


class ClassifierConfig(_Section):
    """Emotion model; its card (same path, ``.json``) gives labels, input size and preprocessing."""

    model: Path = Field(
        default=DEFAULT_EMOTION_MODEL, strict=False, description="Fully int8 .tflite emotion model."
    )
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
    publish_timeout_s: float = Field(
        default=3.0,
        ge=0,
        le=300,
        description="At shutdown, how long to wait for PUBACKs of pending windows; what is left stays in the "
        "outbox for the next start.",
    )
    client_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Default: edge-agent-{device_id}."
    )
    max_inflight: int = Field(
        default=20, ge=1, le=1000, description="Windows handed to the MQTT client at once, awaiting PUBACK."
    )
    stats_interval_s: float = Field(default=60.0, ge=1, le=86400, description="Seconds between stats messages.")
    tls: bool = Field(default=False, description="Connect with TLS. Implied by ca_file.")
    ca_file: Path | None = Field(
        default=None, strict=False, description="PEM file of the CA that signed the broker's certificate."
    )
    cert_file: Path | None = Field(
        default=None, strict=False, description="PEM client certificate, for brokers that require one."
    )
    key_file: Path | None = Field(default=None, strict=False, description="PEM private key of cert_file.")
    username: str | None = Field(default=None, min_length=1, max_length=256)
    password_file: Path | None = Field(
        default=None,
        strict=False,
        description="File whose first line is the password. Keep it readable by the agent only.",
    )
    password_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable that holds the password, for example from systemd's LoadCredential.",
    )

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.ca_file is not None or self.cert_file is not None

    @model_validator(mode="after")
    def _check_credentials(self) -> MqttConfig:
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("set password_file or password_env, not both")
        if (self.password_file is not None or self.password_env is not None) and self.username is None:
            raise ValueError("a password needs a username: set username")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        return self


class OutboxConfig(_Section):
    """Durable queue of finished windows, kept until the broker acknowledges them."""

    path: Path = Field(
        strict=False,
        default=Path("outbox.sqlite3"),
        description="SQLite file. A relative path is resolved against $STATE_DIRECTORY when systemd sets it, "
        "otherwise against the config file's directory.",
    )
    max_windows: int = Field(
        default=100_000,
        ge=10,
        le=10_000_000,
        description="Windows kept at most; 100000 windows of 10 s are about 11 days.",
    )
    when_full: Literal["drop_oldest", "drop_newest"] = Field(
        default="drop_oldest",
        description="drop_oldest deletes the oldest pending window to make room; drop_newest discards the new "
        "one. Either way the drop is counted in stats and logged.",
    )


class AgentConfig(_Section):
    """Whole agent configuration."""

    device_id: Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
    room: Annotated[str, Field(min_length=1, max_length=64)]
    source: SourceConfig = SourceConfig()
    detector: DetectorConfig = DetectorConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    window: WindowConfig = WindowConfig()
    mqtt: MqttConfig = MqttConfig()
    outbox: OutboxConfig = OutboxConfig()
    budget_mib: int = Field(
        default=DEFAULT_BUDGET_MIB,
        ge=32,
        le=65536,
        description="RAM the agent may use, in MiB. The agent rejects a start when its parts add up to more, "
        "and the systemd unit's MemoryHigh and MemoryMax derive from it.",
    )

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
    "float_type": "write a number without quotes, such as 10.0",
    "int_type": "write a whole number without quotes, such as 10",
    "bool_type": "write true or false without quotes",
    "string_type": "write it in double quotes",
}


def format_validation_error(error: ValidationError, source: str) -> str:
    """Return one line per invalid key: key, value, problem and fix."""
    lines = [f"{source}: {error.error_count()} invalid setting(s)"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        value = item.get("input")
        if item["type"] == "missing":
            shown = "(not set)"
        elif isinstance(value, dict):
            # A check across keys of one section fails on the whole section; its message names the keys.
            shown = "(section)"
        else:
            shown = repr(value)
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
            existing = data.setdefault(section, {})
            if not isinstance(existing, dict):
                raise ConfigError(
                    f"{path}: {section} = {existing!r} is a single value, but {section} is a section: "
                    f"write it as a [{section}] table"
                )
            existing.update(values)
        else:
            data[section] = values

    _resolve_paths(data, path.parent)
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, str(path))) from None


def _resolve_paths(data: dict, base: Path) -> None:
    path_keys = (
        ("detector", "model"),
        ("classifier", "model"),
        ("mqtt", "ca_file"),
        ("mqtt", "cert_file"),
        ("mqtt", "key_file"),
        ("mqtt", "password_file"),
    )
    for section, key in path_keys:
        value = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
        if isinstance(value, str) and value and not Path(value).is_absolute():
            data[section][key] = str(base / value)
    source = data.get("source")
    if isinstance(source, dict) and source.get("kind") in ("video", "images"):
        uri = source.get("uri")
        if isinstance(uri, str) and uri and not Path(uri).is_absolute():
            source["uri"] = str(base / uri)
    outbox = data.setdefault("outbox", {})
    if isinstance(outbox, dict):
        # systemd's StateDirectory= sets STATE_DIRECTORY, the one writable place under ProtectSystem=strict.
        state_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        outbox_base = Path(state_dir) if state_dir else base
        value = outbox.get("path", "outbox.sqlite3")
        if isinstance(value, str) and value and not Path(value).is_absolute():
            outbox["path"] = str(outbox_base / value)


def utc_now() -> datetime:
    return datetime.now(UTC)
