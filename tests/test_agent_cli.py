"""Bad input to ``edge-agent run``: one clear message and a non-zero exit for each case."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.config import DEFAULT_EMOTION_MODEL
from tests.conftest import MEDIA_DIR, free_port

VIDEO = MEDIA_DIR / "single_face.mp4"


def write_config(tmp_path: Path, port: int, extra: str = "") -> Path:
    config = tmp_path / "agent.toml"
    config.write_text(
        'device_id = "pi-test"\nroom = "101"\n'
        f'[source]\nkind = "video"\nuri = "{VIDEO}"\nsample_fps = 5.0\n'
        f"[window]\nmin_faces = 1\n"
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nconnect_timeout_s = 3.0\n' + extra
    )
    return config


def run_agent(config: Path, *extra: str) -> int:
    return main(["run", "--config", str(config), "--start", "2026-03-02T08:00:00+00:00", *extra])


def test_run_publishes_and_summarizes(tmp_path, mqtt_broker):
    summary_path = tmp_path / "summary.json"
    assert run_agent(write_config(tmp_path, mqtt_broker.port), "--summary-json", str(summary_path)) == 0
    summary = json.loads(summary_path.read_text())
    # single_face.mp4 (a smiling man): 72 frames at 30 frames/s, sampled at 5 frames/s, make 12 frames in one window.
    assert summary["frames_sampled"] == 12
    assert summary["windows_published"] == summary["windows_acknowledged"] == 1
    assert summary["label_counts"]["happy"] >= 6


def test_missing_video(tmp_path, mqtt_broker, capsys):
    config = write_config(tmp_path, mqtt_broker.port)
    assert run_agent(config, "--source", str(tmp_path / "absent.mp4")) == 1
    assert "Video file not found" in capsys.readouterr().err


def test_unreadable_video(tmp_path, mqtt_broker, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 4096)
    assert run_agent(write_config(tmp_path, mqtt_broker.port), "--source", str(broken)) == 1
    err = capsys.readouterr().err
    assert "Cannot open video" in err
    assert "broken.mp4" in err


def test_missing_model(tmp_path, mqtt_broker, capsys):
    config = write_config(tmp_path, mqtt_broker.port, '[classifier]\nmodel = "absent.tflite"\n')
    assert run_agent(config) == 1
    err = capsys.readouterr().err
    assert "absent.tflite" in err


def test_model_card_mismatch(tmp_path, mqtt_broker, capsys):
    model = tmp_path / "model.tflite"
    shutil.copy(DEFAULT_EMOTION_MODEL, model)
    card = json.loads(DEFAULT_EMOTION_MODEL.with_suffix(".json").read_text())
    card["file_name"] = model.name
    card["input"]["height"] = card["input"]["width"] = 48
    model.with_suffix(".json").write_text(json.dumps(card))
    config = write_config(tmp_path, mqtt_broker.port, f'[classifier]\nmodel = "{model}"\n')
    assert run_agent(config) == 1
    err = capsys.readouterr().err
    assert "48" in err
    assert "64" in err


def test_unknown_detector(tmp_path, capsys):
    config = write_config(tmp_path, 1883, '[detector]\nbackend = "yolo"\n')
    assert run_agent(config) == 2
    assert "detector.backend = 'yolo'" in capsys.readouterr().err


def test_broker_unreachable(tmp_path, capsys):
    assert run_agent(write_config(tmp_path, free_port())) == 1
    err = capsys.readouterr().err
    assert "Cannot connect to the MQTT broker at 127.0.0.1:" in err
    assert "Check that the broker runs" in err


def test_start_without_offset(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--config", str(write_config(tmp_path, 1883)), "--start", "2026-03-02T08:00:00"])
    assert exit_info.value.code == 2
    assert "has no UTC offset" in capsys.readouterr().err
