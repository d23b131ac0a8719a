from datetime import UTC, datetime, timedelta

import cv2
import numpy as np
import pytest

from edge_agent.capture import ImageFolderSource, LatestFrameSlot, SourceTimeSampler, VideoFileSource, open_source
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
