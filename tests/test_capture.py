import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import cv2
import numpy as np
import pytest

from edge_agent.capture import (
    ImageFolderSource,
    LatestFrameSlot,
    ResilientSource,
    SourceTimeSampler,
    VideoFileSource,
    open_source,
    picamera_to_bgr,
    prepare_frame,
)
from edge_agent.config import SourceConfig
from edge_agent.errors import SourceError
from tests.conftest import LABELLED_DIR, MEDIA_DIR

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
VIDEO = MEDIA_DIR / "single_face.mp4"


def test_video_replays_on_its_own_timeline():
    source = VideoFileSource(VIDEO, sample_fps=10, start=START)
    frames = list(source.frames())
    assert source.fps == pytest.approx(30, abs=0.1)
    # 72 frames at 30 frames/s sampled at 10 frames/s: every third frame.
    assert [frame.index for frame in frames] == list(range(0, 72, 3))
    assert frames[0].timestamp == START
    assert frames[1].timestamp - START == timedelta(seconds=3 / source.fps)
    assert all(frame.image.shape == (360, 640, 3) for frame in frames)


def test_video_faster_sampling_takes_every_frame():
    frames = list(VideoFileSource(VIDEO, sample_fps=120, start=START).frames())
    assert len(frames) == 72


def test_video_default_start_is_before_modification_time():
    source = VideoFileSource(VIDEO, sample_fps=1, start=None)
    modified = datetime.fromtimestamp(VIDEO.stat().st_mtime, UTC)
    assert modified - source.start == timedelta(seconds=72 / source.fps)


def test_missing_video_names_the_path(tmp_path):
    with pytest.raises(SourceError, match="Video file not found: .*absent.mp4"):
        VideoFileSource(tmp_path / "absent.mp4", 2, START)


def test_corrupt_video_is_rejected(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(VIDEO.read_bytes()[:2000])
    with pytest.raises(SourceError, match="corrupt.mp4"):
        VideoFileSource(corrupt, 2, START)


def test_image_folder_skips_unreadable_files(tmp_path):
    for index, photo in enumerate(sorted(LABELLED_DIR.glob("*.jpg"))[:2]):
        (tmp_path / f"{index}.jpg").write_bytes(photo.read_bytes())
    (tmp_path / "0b.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    frames = list(ImageFolderSource(tmp_path, sample_fps=10, interval_s=2.0, start=START).frames())
    assert [frame.index for frame in frames] == [0, 2]
    assert frames[1].timestamp == START + timedelta(seconds=4)


def test_empty_image_folder_is_rejected(tmp_path):
    with pytest.raises(SourceError, match="has no images"):
        ImageFolderSource(tmp_path, 2, 1.0, START)


def test_missing_camera_is_rejected():
    with pytest.raises(SourceError, match="Cannot open camera"):
        open_source(SourceConfig(kind="camera", uri="/dev/video-absent"))


def test_sampler_spacing():
    sampler = SourceTimeSampler(sample_fps=2)
    taken = [t / 10 for t in range(0, 30) if sampler.take(t / 10)]
    assert taken == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]


def test_latest_frame_slot_drops_and_counts():
    slot = LatestFrameSlot()
    for value in range(3):
        slot.put(np.full((1, 1, 3), value, np.uint8))
    assert slot.take(timeout_s=0.1)[0, 0, 0] == 2
    assert slot.skipped == 2
    assert slot.take(timeout_s=0.01) is None
    slot.end()
    assert slot.take(timeout_s=1.0) is None


def test_image_folder_reads_real_pixels(tmp_path):
    photo = cv2.imread(str(sorted(LABELLED_DIR.glob("*.jpg"))[0]))
    cv2.imwrite(str(tmp_path / "a.png"), photo)
    (frame,) = ImageFolderSource(tmp_path, 1, 1.0, START).frames()
    assert np.array_equal(frame.image, photo)


# picamera2 formats, checked on arrays: the camera is not needed to test the byte order.
@pytest.mark.parametrize(
    ("pixel_format", "pixel", "expected_bgr"),
    [
        ("RGB888", [10, 20, 30], [10, 20, 30]),
        ("BGR888", [10, 20, 30], [30, 20, 10]),
        ("XRGB8888", [10, 20, 30, 255], [10, 20, 30]),
        ("XBGR8888", [10, 20, 30, 255], [30, 20, 10]),
    ],
)
def test_picamera_channel_order(pixel_format, pixel, expected_bgr):
    image = np.tile(np.array(pixel, np.uint8), (4, 6, 1))
    bgr = picamera_to_bgr(image, pixel_format)
    assert bgr.shape == (4, 6, 3)
    assert bgr.flags["C_CONTIGUOUS"]
    assert bgr[0, 0].tolist() == expected_bgr


def test_picamera_wrong_channel_count():
    with pytest.raises(SourceError, match=r"shape \(4, 6, 3\) for format XRGB8888"):
        picamera_to_bgr(np.zeros((4, 6, 3), np.uint8), "XRGB8888")


def test_prepare_frame_converts_gray_and_bgra():
    gray = np.full((32, 48), 77, np.uint8)
    bgra = np.dstack([np.full((32, 48), value, np.uint8) for value in (1, 2, 3, 255)])
    assert prepare_frame(gray, 1920, 1080)[0, 0].tolist() == [77, 77, 77]
    assert prepare_frame(bgra, 1920, 1080)[0, 0].tolist() == [1, 2, 3]
    assert prepare_frame(gray[:, :, None], 1920, 1080).shape == (32, 48, 3)


@pytest.mark.parametrize(
    "image",
    [
        None,
        np.zeros((0, 0, 3), np.uint8),
        np.zeros((1, 1, 3), np.uint8),
        np.zeros((1, 1), np.uint8),
        np.zeros((15, 640, 3), np.uint8),
        np.zeros((32, 32, 3), np.float32),
        np.zeros((32, 32, 2), np.uint8),
        np.zeros(32, np.uint8),
    ],
    ids=["none", "empty", "1x1", "1x1-gray", "thin", "float", "two-channel", "one-dimensional"],
)
def test_prepare_frame_drops_unusable(image):
    assert prepare_frame(image, 1920, 1080) is None


def test_prepare_frame_scales_large_down():
    large = np.zeros((4320, 7680, 3), np.uint8)
    assert prepare_frame(large, 1920, 1080).shape == (1080, 1920, 3)
    portrait = np.zeros((3000, 1000, 3), np.uint8)
    assert prepare_frame(portrait, 1920, 1080).shape == (1080, 360, 3)


def test_video_truncated_mid_stream(tmp_path, caplog):
    # MJPEG in AVI keeps its header in front, so a cut file opens and breaks part-way.
    avi = tmp_path / "whole.avi"
    writer = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 360))
    for frame in VideoFileSource(VIDEO, sample_fps=120, start=START).frames():
        writer.write(frame.image)
    writer.release()
    truncated = tmp_path / "truncated.avi"
    data = avi.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])

    with caplog.at_level("WARNING", logger="edge_agent.capture"):
        frames = list(VideoFileSource(truncated, sample_fps=120, start=START).frames())
    assert 10 < len(frames) < 72
    assert all(frame.image.shape == (360, 640, 3) for frame in frames)
    assert f"ended after frame {len(frames)} of the 72 it declares" in caplog.text


def test_complete_video_ends_without_warning(caplog):
    with caplog.at_level("WARNING", logger="edge_agent.capture"):
        frames = list(VideoFileSource(VIDEO, sample_fps=120, start=START).frames())
    assert frames
    assert "ended after frame" not in caplog.text


def live_config(uri: str, **settings) -> SourceConfig:
    return SourceConfig(kind="camera", uri=uri, sample_fps=120, reconnect_min_s=0.1, reconnect_max_s=0.2, **settings)


def take(frames, count: int) -> list:
    return [next(frames) for _ in range(count)]


def test_live_source_ended_comes_back():
    # OpenCV reads a file path as a stream; at its end the stream fails and is reopened.
    states: list[str] = []
    source = ResilientSource(live_config(str(VIDEO)), on_state=states.append)
    frames = source.frames()
    taken = take(frames, 100)
    source.close()
    assert len(taken) == 100
    assert source.reconnects >= 1
    assert "reconnecting" in states
    assert states[-1] == "running"


def test_live_source_missing_then_appears(tmp_path):
    late = tmp_path / "late.mp4"
    idle_calls: list[int] = []
    source = ResilientSource(live_config(str(late)), on_idle=lambda: idle_calls.append(1))
    assert source.state == "running"

    def create_file_later():
        time.sleep(0.5)
        late.write_bytes(VIDEO.read_bytes())

    writer = threading.Thread(target=create_file_later)
    writer.start()
    frames = source.frames()
    first = next(frames)
    source.close()
    writer.join()
    assert first.image.shape == (360, 640, 3)
    assert source.reconnects >= 1
    assert idle_calls


def test_live_source_stop_policy_raises():
    source = ResilientSource(live_config(str(VIDEO), on_loss="stop"))
    with pytest.raises(SourceError, match="stopped delivering frames"):
        for _ in source.frames():
            pass
    assert source.state == "ended"


def test_stop_policy_fails_at_start(tmp_path):
    with pytest.raises(SourceError, match="Cannot open camera"):
        ResilientSource(live_config(str(tmp_path / "absent.mp4"), on_loss="stop"))


def test_resilient_source_counts_dropped_frames(tmp_path):
    photo = cv2.imread(str(sorted(LABELLED_DIR.glob("*.jpg"))[0]))
    cv2.imwrite(str(tmp_path / "0.png"), photo)
    cv2.imwrite(str(tmp_path / "1.png"), np.zeros((1, 1, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "2.png"), cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
    config = SourceConfig(kind="images", uri=str(tmp_path), sample_fps=10, start=START)
    source = ResilientSource(config)
    frames = list(source.frames())
    assert [frame.index for frame in frames] == [0, 2]
    assert source.invalid_frames == 1
    assert source.state == "ended"


def test_folder_given_as_video_names_the_fix(tmp_path):
    with pytest.raises(SourceError, match='is a folder, not a video file.*kind = "images"'):
        VideoFileSource(tmp_path, 2, START)


def test_file_given_as_image_folder_names_the_fix():
    with pytest.raises(SourceError, match='is a file, not an image folder.*kind = "video"'):
        ImageFolderSource(VIDEO, 2, 1.0, START)


@pytest.mark.parametrize(("limit", "expected"), [((1920, 1080), None), ((320, 320), 320)])
def test_largest_frame_video_own_size(limit, expected):
    config = SourceConfig(kind="video", uri=str(VIDEO), start=START, width=limit[0], height=limit[1])
    source = ResilientSource(config)
    frame = next(source.frames())
    source.close()
    height_px, width_px = frame.image.shape[:2]
    assert source.largest_frame_px == (width_px, height_px)
    if expected is not None:
        assert max(width_px, height_px) == expected
    else:
        assert (width_px, height_px) != limit


def test_largest_frame_photos_use_limit():
    config = SourceConfig(kind="images", uri=str(LABELLED_DIR), start=START, width=800, height=600)
    assert ResilientSource(config).largest_frame_px == (800, 600)


class FakePicamera2:
    """Records the configuration that PiCamera2Source requests from picamera2, without a camera."""

    configurations: list = []

    def create_video_configuration(self, **arguments):
        return arguments

    def configure(self, configuration):
        FakePicamera2.configurations.append(configuration)

    def start(self):
        pass

    def close(self):
        pass


def test_pi_camera_runs_at_the_capture_rate(monkeypatch):
    module = type(sys)("picamera2")
    module.Picamera2 = FakePicamera2
    monkeypatch.setitem(sys.modules, "picamera2", module)
    FakePicamera2.configurations.clear()
    config = SourceConfig(kind="picamera2", sample_fps=2.0, width=1280, height=720)
    open_source(config).close()
    (configuration,) = FakePicamera2.configurations
    assert configuration["controls"]["FrameDurationLimits"] == (200_000, 200_000)
    assert configuration["main"] == {"size": (1280, 720), "format": "RGB888"}
    assert configuration["buffer_count"] == 3
