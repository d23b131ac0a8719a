"""Frame sources: video files, image folders, OpenCV cameras and streams, and picamera2.

Every source yields ``Frame`` records at the configured sampling rate, each with the
wall-clock time it shows. A recorded video or an image folder is replayed on its own
timeline, anchored at a configured start time, as fast as the pipeline runs; a live
camera is stamped with the current time. Frames stay in memory: no source writes
pixels anywhere.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edge_agent.config import SourceConfig
from edge_agent.errors import SourceError, SourceSetupError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# Frames with a side below this cannot hold a face the detectors find, and are dropped.
MIN_FRAME_PX = 16
IDLE_CALLBACK_S = 1.0
# A live source whose reader thread is alive but delivers nothing for this long counts as failed.
STALL_TIMEOUT_S = 30.0
# Byte order of each picamera2 format in the arrays capture_array returns (Picamera2
# manual, appendix A): the names give the order of a little-endian word, so "RGB888"
# arrives as B, G, R and "XRGB8888" as B, G, R, 255.
PICAMERA_BYTE_ORDER = {"RGB888": "BGR", "BGR888": "RGB", "XRGB8888": "BGRX", "XBGR8888": "RGBX"}


def _do_nothing() -> None:
    pass


def picamera_to_bgr(image: np.ndarray, pixel_format: str) -> np.ndarray:
    """Convert a picamera2 ``capture_array`` result to contiguous BGR.

    Raises:
        SourceError: the format is unknown or the array does not have its channel count.
    """
    order = PICAMERA_BYTE_ORDER.get(pixel_format)
    if order is None:
        raise SourceError(
            f"Unsupported picamera2 pixel format {pixel_format!r}: use one of {', '.join(PICAMERA_BYTE_ORDER)}."
        )
    channels = len(order)
    if image.ndim != 3 or image.shape[2] != channels:
        raise SourceError(
            f"picamera2 returned an array of shape {image.shape} for format {pixel_format}, "
            f"expected (height, width, {channels})"
        )
    if order.startswith("BGR"):
        return np.ascontiguousarray(image[:, :, :3])
    return np.ascontiguousarray(image[:, :, 2::-1])


def limited_size_px(width_px: int, height_px: int, max_width_px: int, max_height_px: int) -> tuple[int, int]:
    """Return the size that ``prepare_frame`` gives a frame of this size: scaled down to the limit, never up."""
    scale = min(max_width_px / width_px, max_height_px / height_px)
    if scale >= 1.0:
        return width_px, height_px
    return max(1, round(width_px * scale)), max(1, round(height_px * scale))


def prepare_frame(image: np.ndarray | None, max_width_px: int, max_height_px: int) -> np.ndarray | None:
    """Return a contiguous BGR uint8 frame within the size limit, or None for a frame to drop.

    Grayscale and four-channel (BGRA) frames are converted, frames larger than the limit
    are scaled down keeping their aspect ratio, and empty, non-uint8, malformed or tiny
    frames (a side below ``MIN_FRAME_PX``) return None.
    """
    if image is None or not isinstance(image, np.ndarray) or image.size == 0 or image.dtype != np.uint8:
        return None
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim < 2 or min(image.shape[:2]) < MIN_FRAME_PX:
        return None
    if image.ndim == 2:
        bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGRA2BGR)
    elif image.ndim == 3 and image.shape[2] == 3:
        bgr = np.ascontiguousarray(image)
    else:
        return None
    height_px, width_px = bgr.shape[:2]
    size = limited_size_px(width_px, height_px, max_width_px, max_height_px)
    if size != (width_px, height_px):
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    return bgr


@dataclass(frozen=True, slots=True)
class Frame:
    """One sampled frame: BGR uint8 pixels and the UTC time they show."""

    image: np.ndarray
    timestamp: datetime
    index: int


class FrameSource(Protocol):
    description: str

    def frames(self) -> Iterator[Frame]:
        """Yield sampled frames until the source ends or ``close`` is called."""
        ...

    def close(self) -> None: ...


class SourceTimeSampler:
    """Pick frames on a source timeline so that at most ``sample_fps`` are analysed per second."""

    def __init__(self, sample_fps: float) -> None:
        self._interval_s = 1.0 / sample_fps
        self._next_s = 0.0

    def take(self, position_s: float) -> bool:
        # A small tolerance keeps 30 fps video sampled at 10 fps on every third frame
        # despite float rounding of the frame positions.
        if position_s + 1e-6 < self._next_s:
            return False
        while self._next_s <= position_s + 1e-6:
            self._next_s += self._interval_s
        return True


# Frames a video may fall short of its declared count without a warning.
END_TOLERANCE_FRAMES = 2


class VideoFileSource:
    """A recorded video replayed on its own timeline."""

    def __init__(self, path: Path, sample_fps: float, start: datetime | None) -> None:
        self.path = Path(path)
        self.description = f"video {self.path}"
        if not self.path.is_file():
            if self.path.is_dir():
                raise SourceError(f"{self.path} is a folder, not a video file. For photos, set [source] kind = \"images\".")
            raise SourceError(f"Video file not found: {self.path}. Check [source] uri in the config or --source.")
        self._capture = cv2.VideoCapture(str(self.path))
        if not self._capture.isOpened():
            raise SourceError(
                f"Cannot open video {self.path}: OpenCV cannot decode it. "
                "Check that it is a complete video file (for example MP4 with H.264)."
            )
        self.fps = self._capture.get(cv2.CAP_PROP_FPS) or 0.0
        if not 0.1 <= self.fps <= 1000:
            raise SourceError(f"Video {self.path} reports {self.fps} frames/s; re-encode it with a valid frame rate.")
        self.frame_count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        ok, first = self._capture.read()
        if not ok or first is None or first.size == 0:
            self._capture.release()
            raise SourceError(f"Video {self.path} has no readable frame; the file is empty or corrupt.")
        self._first = first
        # Every frame of a video file has the size of the first.
        self.frame_size_px = (first.shape[1], first.shape[0])
        self.start = start or self._default_start()
        self._sampler = SourceTimeSampler(sample_fps)
        self._closed = False

    def _default_start(self) -> datetime:
        # A camera writes the file's modification time when recording ends.
        modified = datetime.fromtimestamp(os.stat(self.path).st_mtime, UTC)
        return modified - timedelta(seconds=self.frame_count / self.fps)

    def frames(self) -> Iterator[Frame]:
        index = 0
        first: np.ndarray | None = self._first
        while not self._closed:
            position_s = index / self.fps
            if first is not None:
                image, first = first, None
            elif not self._capture.grab():
                break
            else:
                image = None
            if self._sampler.take(position_s):
                image = image if image is not None else self._retrieve(index)
                if image is not None:
                    yield Frame(image, self.start + timedelta(seconds=position_s), index)
            index += 1
        self._capture.release()
        # The container's frame count can be off by a frame or two at the end.
        if not self._closed and index < self.frame_count - END_TOLERANCE_FRAMES:
            log.warning(
                "Video %s ended after frame %d of the %d it declares: the rest cannot be read, so the file is "
                "truncated or corrupt. Windows after %s are missing; re-copy or re-encode the file.",
                self.path, index, self.frame_count, (self.start + timedelta(seconds=index / self.fps)).isoformat(),
            )

    def _retrieve(self, index: int) -> np.ndarray | None:
        # grab() only demuxes; decoding in retrieve() is skipped for frames not sampled.
        ok, image = self._capture.retrieve()
        if not ok or image is None:
            log.warning("Skipping undecodable frame %d of %s", index, self.path)
            return None
        return image

    def close(self) -> None:
        self._closed = True


class ImageFolderSource:
    """Photos in a folder, in name order, one every ``image_interval_s`` of source time."""

    def __init__(self, path: Path, sample_fps: float, interval_s: float, start: datetime | None) -> None:
        self.path = Path(path)
        self.description = f"image folder {self.path}"
        if not self.path.is_dir():
            if self.path.is_file():
                raise SourceError(f"{self.path} is a file, not an image folder. For a video, set [source] kind = \"video\".")
            raise SourceError(f"Image folder not found: {self.path}. Check [source] uri in the config or --source.")
        self._files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise SourceError(
                f"Image folder {self.path} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})."
            )
        self._interval_s = interval_s
        self.start = start or datetime.now(UTC)
        self._sampler = SourceTimeSampler(sample_fps)
        self._closed = False

    def frames(self) -> Iterator[Frame]:
        for index, file in enumerate(self._files):
            if self._closed:
                return
            position_s = index * self._interval_s
            if not self._sampler.take(position_s):
                continue
            image = cv2.imread(str(file), cv2.IMREAD_COLOR)
            if image is None:
                log.warning("Skipping unreadable image %s", file)
                continue
            yield Frame(image, self.start + timedelta(seconds=position_s), index)

    def close(self) -> None:
        self._closed = True


class LatestFrameSlot:
    """Hand-over of the newest frame from a reader thread, dropping older ones.

    Processing never queues frames: a frame that is replaced before it is taken is
    counted as skipped.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._image: np.ndarray | None = None
        self._ended = False
        self.skipped = 0

    def put(self, image: np.ndarray) -> None:
        with self._condition:
            if self._image is not None:
                self.skipped += 1
            self._image = image
            self._condition.notify()

    def end(self) -> None:
        with self._condition:
            self._ended = True
            self._condition.notify()

    def take(self, timeout_s: float) -> np.ndarray | None:
        """Return the newest frame, or None when the reader ended or none came in time."""
        with self._condition:
            self._condition.wait_for(lambda: self._image is not None or self._ended, timeout=timeout_s)
            image, self._image = self._image, None
            return image


class LiveSource:
    """Base of live sources: a reader thread fills a ``LatestFrameSlot``; frames are stamped now."""

    description = "live source"

    def __init__(self, sample_fps: float) -> None:
        self._interval_s = 1.0 / sample_fps
        self._slot = LatestFrameSlot()
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self.read_error: str | None = None
        # Called about once a second while no frame arrives, so the caller's loop keeps its
        # watchdog and MQTT housekeeping going.
        self.on_idle: Callable[[], None] = _do_nothing

    @property
    def skipped_frames(self) -> int:
        return self._slot.skipped

    def _read_one(self) -> np.ndarray | None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _read_loop(self) -> None:
        try:
            while not self._stop.is_set():
                image = self._read_one()
                if image is None:
                    self.read_error = f"{self.description} stopped delivering frames"
                    break
                self._slot.put(image)
        finally:
            self._slot.end()

    def frames(self) -> Iterator[Frame]:
        self._reader = threading.Thread(target=self._read_loop, name="frame-reader", daemon=True)
        self._reader.start()
        index = 0
        next_due = time.monotonic()
        last_frame_at = time.monotonic()
        try:
            while not self._stop.is_set():
                delay_s = next_due - time.monotonic()
                if delay_s > 0 and self._stop.wait(delay_s):
                    break
                next_due = max(next_due + self._interval_s, time.monotonic())
                image = self._slot.take(timeout_s=IDLE_CALLBACK_S)
                if image is None:
                    if self.read_error or not self._reader.is_alive():
                        raise SourceError(self.read_error or f"{self.description} ended")
                    self.on_idle()
                    waited_s = time.monotonic() - last_frame_at
                    if waited_s > STALL_TIMEOUT_S:
                        raise SourceError(f"{self.description} delivered no frame for {STALL_TIMEOUT_S:.0f} s")
                    continue
                last_frame_at = time.monotonic()
                yield Frame(image, datetime.now(UTC), index)
                index += 1
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=2.0)
        self._release()


class OpenCVCameraSource(LiveSource):
    """A V4L2/USB camera by index, or an RTSP/HTTP stream by URL, read with OpenCV."""

    def __init__(
        self, uri: str, sample_fps: float, width: int | None, height: int | None, capture_fps: float | None = None
    ) -> None:
        super().__init__(sample_fps)
        target: int | str = int(uri) if uri.isdigit() else uri
        self.description = f"camera {uri}"
        self._capture = cv2.VideoCapture(target)
        if not self._capture.isOpened():
            raise SourceError(
                f"Cannot open camera {uri!r} with OpenCV. Check that the device exists (ls /dev/video*) "
                "and that no other process uses it, or that the stream URL is reachable."
            )
        if width and height:
            self._capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            self._capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        # Only a local device takes a frame rate; a stream or file keeps its own.
        if capture_fps is not None and isinstance(target, int):
            self._capture.set(cv2.CAP_PROP_FPS, capture_fps)
            log.info(
                "Camera %s: asked for %.1f frames/s, it reports %.1f",
                uri, capture_fps, self._capture.get(cv2.CAP_PROP_FPS),
            )

    def _read_one(self) -> np.ndarray | None:
        ok, image = self._capture.read()
        return image if ok and image is not None and image.size else None

    def _release(self) -> None:
        self._capture.release()


class PiCamera2Source(LiveSource):
    """The Raspberry Pi camera through picamera2, imported only when this source is used."""

    def __init__(
        self,
        sample_fps: float,
        width: int | None,
        height: int | None,
        pixel_format: str = "RGB888",
        capture_fps: float | None = None,
    ) -> None:
        super().__init__(sample_fps)
        self.description = "picamera2"
        self._pixel_format = pixel_format
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise SourceSetupError(
                "picamera2 is not installed. On Raspberry Pi OS run 'sudo apt install python3-picamera2' "
                "and create the virtual environment with --system-site-packages."
            ) from None
        try:
            self._camera = Picamera2()
            size = (width or 1280, height or 720)
            controls = {}
            if capture_fps is not None:
                frame_us = round(1_000_000 / capture_fps)
                # Equal limits fix the frame rate; exposure can then last up to one frame.
                controls["FrameDurationLimits"] = (frame_us, frame_us)
            # Three buffers: one being filled, one queued, one read. picamera2's video default
            # of six keeps three more frames (8 MiB at 1280x720) that latest-frame sampling drops.
            config = self._camera.create_video_configuration(
                main={"size": size, "format": pixel_format}, controls=controls, buffer_count=3
            )
            self._camera.configure(config)
            self._camera.start()
        except (RuntimeError, IndexError, OSError) as error:
            raise SourceError(f"Cannot start the Pi camera: {error}. Is another process using it?") from None

    def _read_one(self) -> np.ndarray | None:
        return picamera_to_bgr(self._camera.capture_array("main"), self._pixel_format)

    def _release(self) -> None:
        self._camera.close()


def open_source(config: SourceConfig) -> FrameSource:
    """Open the source described by the config.

    Raises:
        SourceError: the file, folder or camera cannot be opened.
    """
    if config.kind == "video":
        return VideoFileSource(Path(config.uri), config.sample_fps, config.start)
    if config.kind == "images":
        return ImageFolderSource(Path(config.uri), config.sample_fps, config.image_interval_s, config.start)
    if config.kind == "camera":
        return OpenCVCameraSource(config.uri, config.sample_fps, config.width, config.height, config.camera_fps)
    if config.kind == "picamera2":
        return PiCamera2Source(
            config.sample_fps, config.width, config.height, config.pixel_format, config.camera_fps
        )
    raise SourceError(f"Unknown source kind {config.kind!r}: use video, images, camera or picamera2.")


class ResilientSource:
    """A source that is reopened with exponential back-off when it fails or ends, or stops, as configured.

    Each frame is passed through ``prepare_frame``; dropped frames are counted in
    ``invalid_frames``. ``state`` is "running", "reconnecting" or "ended", and
    ``on_state`` is called with it on every change. While it waits, it calls
    ``on_idle`` about once a second.

    With the "stop" policy, a failure ends ``frames`` with the ``SourceError``, and the
    normal end of a recording ends it quietly. The first open happens in the
    constructor under the "stop" policy, so a wrong path fails at start.
    """

    def __init__(
        self,
        config: SourceConfig,
        opener: Callable[[SourceConfig], FrameSource] | None = None,
        on_idle: Callable[[], None] = _do_nothing,
        on_state: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.policy = config.loss_policy
        self._opener = opener or open_source
        self.on_idle = on_idle
        self.on_state = on_state
        self._stop = threading.Event()
        self._skipped_before = 0
        self.invalid_frames = 0
        self.reconnects = 0
        self.state = "running"
        self._current: FrameSource | None = None
        self._first_error: SourceError | None = None
        try:
            self._current = self._opener(config)
        except SourceError as error:
            if self.policy == "stop" or isinstance(error, SourceSetupError):
                raise
            self._first_error = error
        self.description = self._current.description if self._current else f"{config.kind} {config.uri}"
        self._frame_size_px: tuple[int, int] | None = getattr(self._current, "frame_size_px", None)

    @property
    def largest_frame_px(self) -> tuple[int, int]:
        """(width, height) of the largest frame that ``frames`` can yield.

        A video file's frames all have the size of its first, scaled like ``prepare_frame``
        does. Cameras and photo folders may deliver any size up to ``max_frame_px``.
        """
        max_width_px, max_height_px = self.config.max_frame_px
        size = self._frame_size_px
        if size is None:
            return max_width_px, max_height_px
        return limited_size_px(size[0], size[1], max_width_px, max_height_px)

    @property
    def skipped_frames(self) -> int:
        current = getattr(self._current, "skipped_frames", 0) if self._current else 0
        return self._skipped_before + current

    def frames(self) -> Iterator[Frame]:
        max_width_px, max_height_px = self.config.max_frame_px
        delay_s = self.config.reconnect_min_s
        warned_size = False
        if self._first_error is not None:
            self._wait_after(self._first_error, delay_s)
            delay_s = min(delay_s * 2, self.config.reconnect_max_s)
        while not self._stop.is_set():
            source = self._current or self._open()
            if source is None:
                self._wait_after(None, delay_s)
                delay_s = min(delay_s * 2, self.config.reconnect_max_s)
                continue
            if hasattr(source, "on_idle"):
                source.on_idle = self.on_idle
            failure: SourceError | None = None
            try:
                for frame in source.frames():
                    if self._stop.is_set():
                        break
                    self._set_state("running")
                    delay_s = self.config.reconnect_min_s
                    image = prepare_frame(frame.image, max_width_px, max_height_px)
                    if image is None:
                        self._count_invalid(frame)
                        continue
                    if not warned_size and image.shape[:2] != frame.image.shape[:2]:
                        warned_size = True
                        log.warning(
                            "Frames of %s are %dx%d, larger than the configured %dx%d: scaling them down",
                            self.description, frame.image.shape[1], frame.image.shape[0],
                            max_width_px, max_height_px,
                        )
                    yield Frame(image, frame.timestamp, frame.index)
            except SourceError as error:
                failure = error
            finally:
                self._skipped_before += getattr(source, "skipped_frames", 0)
                self._current = None
                source.close()
            if self._stop.is_set():
                break
            if self.policy == "stop":
                self._set_state("ended")
                if failure is not None:
                    raise failure
                log.info("Source %s ended", self.description)
                return
            self._wait_after(failure, delay_s)
            delay_s = min(delay_s * 2, self.config.reconnect_max_s)
        self._set_state("ended")

    def close(self) -> None:
        self._stop.set()
        current = self._current
        if current is not None:
            current.close()

    def _open(self) -> FrameSource | None:
        try:
            source = self._opener(self.config)
        except SourceError as error:
            log.warning("Cannot reopen %s: %s", self.description, error)
            return None
        self.reconnects += 1
        log.info("Source %s reopened (reconnect %d)", source.description, self.reconnects)
        self._current = source
        self._frame_size_px = getattr(source, "frame_size_px", None)
        return source

    def _wait_after(self, failure: SourceError | None, delay_s: float) -> None:
        self._set_state("reconnecting")
        if failure is not None:
            log.warning("Source %s failed: %s; reopening in %.0f s", self.description, failure, delay_s)
        else:
            log.info("Source %s ended or is unavailable; reopening in %.0f s", self.description, delay_s)
        deadline = time.monotonic() + delay_s
        while not self._stop.is_set():
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                break
            self._stop.wait(min(remaining_s, IDLE_CALLBACK_S))
            self.on_idle()

    def _count_invalid(self, frame: Frame) -> None:
        self.invalid_frames += 1
        # Log the first and then every 100th, so a broken camera cannot flood the journal.
        if self.invalid_frames == 1 or self.invalid_frames % 100 == 0:
            shape = getattr(frame.image, "shape", None)
            log.warning(
                "Dropped frame %d of %s: empty, malformed or smaller than %d px (shape %s); %d dropped so far",
                frame.index, self.description, MIN_FRAME_PX, shape, self.invalid_frames,
            )

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        self.state = state
        if self.on_state is not None:
            self.on_state(state)
