"""The main job end to end: real video, real models, real Mosquitto, real SQLite, the real CLIs."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from aggregator.report import compute_report
from aggregator.store import Store
from aggregator.times import resolve_zone
from tests.conftest import MEDIA_DIR, REPO_ROOT

VIDEO = MEDIA_DIR / "WolfgangLanger_Pexels.mp4"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "demo" / "run_demo.py"), "--work-dir", str(work_dir), "--video", str(VIDEO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return work_dir, result


def test_demo_exits_zero_and_prints_report(demo_run):
    work_dir, result = demo_run
    assert result.returncode == 0, result.stderr
    assert "Lecture 1: Demo lecture" in result.stdout
    assert "Emotion shares" in result.stdout
    assert "Timeline (5 s steps" in result.stdout


def test_stored_totals_equal_agent_totals(demo_run):
    work_dir, result = demo_run
    assert result.returncode == 0, result.stderr
    summary = json.loads((work_dir / "agent-summary.json").read_text())
    with Store.open(f"sqlite:///{work_dir / 'aggregator.db'}") as store:
        windows = store.windows_in_room(
            "demo-room", datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 3, 3, tzinfo=UTC)
        )
        report = compute_report(store, 1, resolve_zone("UTC"), step_s=5)

    # WolfgangLanger_Pexels.mp4: 472 frames at 23.98 frames/s, sampled at 8 frames/s.
    assert summary["frames_sampled"] == 158
    assert len(windows) == summary["windows_published"] == 4
    assert sum(window.frames_sampled for window in windows) == summary["frames_sampled"]
    assert sum(window.faces_seen for window in windows) == summary["faces_seen"]
    # One woman fills the frame, so every sampled frame has exactly one face.
    assert summary["faces_seen"] == summary["frames_sampled"]
    assert windows[0].window_start == datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    assert windows[-1].window_end == datetime(2026, 3, 2, 9, 0, 20, tzinfo=UTC)

    stored_counts: dict[str, int] = {}
    for window in windows:
        for label, count in (window.counts or {}).items():
            stored_counts[label] = stored_counts.get(label, 0) + count
    assert stored_counts == summary["label_counts"]

    shares = {share.label: share.count for share in report.shares}
    assert shares == summary["label_counts"]
    assert report.coverage.classified_faces == summary["faces_seen"]


def test_report_shows_the_emotions_counted(demo_run):
    work_dir, result = demo_run
    assert result.returncode == 0, result.stderr
    summary = json.loads((work_dir / "agent-summary.json").read_text())
    total = summary["faces_seen"]
    for label, count in summary["label_counts"].items():
        if count:
            assert f"{label} " in result.stdout
            assert f"{100 * count / total:.1f} %" in result.stdout
    # The clip shows a woman crying, so the default model must find sadness and no disgust.
    # It also labels about half of the frames happy, a weakness the model card describes.
    assert summary["label_counts"]["sad"] > 0.2 * total
    assert summary["label_counts"]["disgust"] == 0


def test_demo_timestamps_follow_the_recording(demo_run):
    work_dir, result = demo_run
    assert result.returncode == 0, result.stderr
    for step in ("09:00:00", "09:00:05", "09:00:10", "09:00:15"):
        assert f"  {step}  " in result.stdout
    assert "09:00:20" not in result.stdout.split("Timeline", 1)[1]
    assert timedelta(seconds=472 / 23.976) < timedelta(seconds=20)


def test_demo_refuses_a_folder_with_other_files(tmp_path):
    precious = tmp_path / "thesis.txt"
    precious.write_text("not the demo's")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "demo" / "run_demo.py"), "--work-dir", str(tmp_path), "--video", str(VIDEO)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "is not empty and was not made by the demo" in result.stderr
    assert precious.read_text() == "not the demo's"
