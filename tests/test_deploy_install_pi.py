"""deploy/install-pi.sh: options, the model check and the files it would copy to a Pi (--stage)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "deploy" / "install-pi.sh"
MODELS_DIR = REPO_ROOT / "edge_agent" / "models"
CARD = MODELS_DIR / "emotion_mini_xception_int8.json"
EDGE_AGENT = Path(sys.executable).parent / "edge-agent"


def run_script(*arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
    )


@pytest.fixture
def fake_wheel(tmp_path: Path) -> Path:
    # --stage only copies the wheel, so its content does not matter here.
    wheel = tmp_path / "classroom_emotion_stats-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"not a real wheel")
    return wheel


def stage(tmp_path: Path, wheel: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    stage_dir = tmp_path / "stage"
    password = tmp_path / "password"
    password.write_text("device-secret\n")
    result = run_script(
        "--room",
        "Room 101",
        "--broker",
        "stats.school.example",
        "--device-id",
        "pi-101",
        "--password-file",
        str(password),
        "--wheel",
        str(wheel),
        "--stage",
        str(stage_dir),
        *extra,
    )
    return result, stage_dir


def test_script_syntax() -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_script_help() -> None:
    result = run_script("--help")
    assert result.returncode == 0
    assert "--room ROOM" in result.stdout


def test_script_missing_room(fake_wheel: Path) -> None:
    result = run_script("--broker", "stats", "--wheel", str(fake_wheel), "pi@pi-101")
    assert result.returncode == 2
    assert "--room is missing" in result.stderr


def test_script_invalid_device_id() -> None:
    result = run_script("--room", "1", "--broker", "b", "--device-id", "pi 101", "pi@x")
    assert result.returncode == 2
    assert "'pi 101' is invalid" in result.stderr


def test_stage_config_validates(tmp_path: Path, fake_wheel: Path) -> None:
    result, stage_dir = stage(tmp_path, fake_wheel)
    assert result.returncode == 0, result.stderr
    card = json.loads(CARD.read_text())
    for name in (card["file_name"], "emotion_mini_xception_int8.json", fake_wheel.name, "edge-agent.service"):
        assert (stage_dir / name).exists(), name
    assert (stage_dir / "mqtt-password").read_text() == "device-secret\n"
    assert (stage_dir / "mqtt-password").stat().st_mode & 0o077 == 0

    config = (stage_dir / "agent.toml").read_text()
    assert 'device_id = "pi-101"' in config
    assert 'room = "Room 101"' in config
    assert "port = 1883" in config
    # check-config requires the files the config names, so point it at the staged copies.
    model_dir = f"/opt/classroom-emotion-stats/models/{card['sha256'][:16]}"
    local = config.replace(model_dir, str(stage_dir)).replace("/etc/edge-agent", str(stage_dir))
    (tmp_path / "agent.toml").write_text(local)
    check = subprocess.run(
        [str(EDGE_AGENT), "check-config", str(tmp_path / "agent.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr


def test_stage_tls_port(tmp_path: Path, fake_wheel: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\n")
    result, stage_dir = stage(tmp_path, fake_wheel, "--ca-file", str(ca_file))
    assert result.returncode == 0, result.stderr
    config = (stage_dir / "agent.toml").read_text()
    assert "port = 8883" in config
    assert 'ca_file = "/etc/edge-agent/mqtt-ca.pem"' in config
    assert (stage_dir / "mqtt-ca.pem").exists()


def test_stage_rejects_model_mismatch(tmp_path: Path, fake_wheel: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    card = json.loads(CARD.read_text())
    shutil.copy(MODELS_DIR / card["file_name"], models / card["file_name"])
    card["sha256"] = "0" * 64
    (models / CARD.name).write_text(json.dumps(card))
    result, _ = stage(tmp_path, fake_wheel, "--model-card", str(models / CARD.name))
    assert result.returncode == 1
    assert "expects " + "0" * 64 in result.stderr
