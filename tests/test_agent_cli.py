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
        # The agent runs inside pytest here, whose imports count as the agent's runtime part.
        'device_id = "pi-test"\nroom = "101"\nbudget_mib = 2048\n'
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


def test_broker_unreachable_keeps_windows(tmp_path, capsys, caplog):
    config = write_config(tmp_path, free_port(), "publish_timeout_s = 0.5\n")
    with caplog.at_level("WARNING"):
        assert run_agent(config) == 1
    err = capsys.readouterr().err
    assert "1 window(s) were not acknowledged by the broker and stay in the outbox" in err
    assert "outbox.sqlite3" in err
    assert "was not reachable during the run. Check that it runs" in err
    assert "is unreachable" in caplog.text


def test_pending_windows_sent_next_run(tmp_path, mqtt_broker, capsys):
    port = mqtt_broker.port
    assert run_agent(write_config(tmp_path, free_port(), "publish_timeout_s = 0.5\n")) == 1
    summary_path = tmp_path / "summary.json"
    assert run_agent(write_config(tmp_path, port), "--summary-json", str(summary_path)) == 0
    summary = json.loads(summary_path.read_text())
    # The replay adds one window; the one left by the first run goes out with it.
    assert summary["windows_acknowledged"] == 2
    assert summary["windows_pending"] == 0


def test_budget_too_small(tmp_path, capsys):
    config = write_config(tmp_path, free_port())
    text = config.read_text().replace("budget_mib = 2048", "budget_mib = 100")
    config.write_text(text.replace("sample_fps = 5.0\n", "sample_fps = 5.0\nwidth = 7680\nheight = 4320\n"))
    assert run_agent(config) == 1
    err = capsys.readouterr().err
    assert "budget_mib is 100" in err
    assert "The largest part is frame buffers" in err


def test_wrong_mqtt_password(tmp_path, capsys):
    password_file = tmp_path / "password"
    password_file.write_text("")
    config = write_config(tmp_path, free_port(), f'username = "pi"\npassword_file = "{password_file}"\n')
    assert run_agent(config) == 2
    assert "is empty: write the password on its first line" in capsys.readouterr().err


def test_start_without_offset(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--config", str(write_config(tmp_path, 1883)), "--start", "2026-03-02T08:00:00"])
    assert exit_info.value.code == 2
    assert "has no UTC offset" in capsys.readouterr().err


@pytest.mark.parametrize("start", ["0026-03-02T08:15:00+01:00", "9999-12-31T23:59:59+00:00", "0001-01-01T00:00:00+14:00"])
def test_start_out_of_range(tmp_path, capsys, start):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--config", str(write_config(tmp_path, 1883)), "--start", start])
    assert exit_info.value.code == 2
    assert "use a year from 1970 to 9000" in capsys.readouterr().err


def test_summary_path_checked_before_the_run(tmp_path, capsys):
    config = write_config(tmp_path, 1883)
    assert main(["run", "--config", str(config), "--summary-json", str(tmp_path)]) == 2
    assert "is a folder: give a file path inside it" in capsys.readouterr().err
    assert main(["run", "--config", str(config), "--summary-json", str(tmp_path / "absent" / "s.json")]) == 2
    assert "does not exist; create it first" in capsys.readouterr().err


def pi_camera_config(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "pi.toml"
    config.write_text(
        'device_id = "pi-test"\nroom = "101"\nbudget_mib = 2048\n'
        '[source]\nkind = "picamera2"\non_loss = "reconnect"\nsample_fps = 5.0\n'
        f'[window]\nmin_faces = 1\n[mqtt]\nhost = "127.0.0.1"\nport = {port}\nconnect_timeout_s = 3.0\n'
    )
    return config


def test_source_path_with_pi_camera(tmp_path, capsys):
    assert main(["run", "--config", str(pi_camera_config(tmp_path, 1883)), "--source", str(VIDEO)]) == 2
    assert "add --source-kind video for a file" in capsys.readouterr().err


def test_missing_picamera2_stops_the_agent_at_start(tmp_path, capsys):
    # picamera2 is not installed off a Pi; no number of reconnects would change that.
    assert main(["run", "--config", str(pi_camera_config(tmp_path, 1883))]) == 1
    assert "picamera2 is not installed" in capsys.readouterr().err


def test_start_with_a_live_source_is_rejected(tmp_path, capsys):
    assert run_agent(pi_camera_config(tmp_path, 1883)) == 2
    assert "start applies to recordings only" in capsys.readouterr().err


def test_source_kind_switch_takes_that_kind_loss_policy(tmp_path, mqtt_broker):
    summary_path = tmp_path / "summary.json"
    config = pi_camera_config(tmp_path, mqtt_broker.port)
    exit_code = run_agent(config, "--source", str(VIDEO), "--source-kind", "video", "--summary-json", str(summary_path))
    assert exit_code == 0
    assert json.loads(summary_path.read_text())["frames_sampled"] == 12


def test_replay_without_a_usable_frame_fails(tmp_path, mqtt_broker, capsys):
    import cv2
    import numpy as np

    tiny = tmp_path / "tiny.avi"
    writer = cv2.VideoWriter(str(tiny), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (8, 8))
    for _ in range(20):
        writer.write(np.zeros((8, 8, 3), np.uint8))
    writer.release()
    assert run_agent(write_config(tmp_path, mqtt_broker.port), "--source", str(tiny)) == 1
    assert "gave no usable frame" in capsys.readouterr().err


def test_date_without_offset_gets_a_valid_example(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["run", "--config", str(write_config(tmp_path, 1883)), "--start", "2026-03-02"])
    assert "for example 2026-03-02T00:00:00+00:00" in capsys.readouterr().err
