from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.config import DEFAULT_EMOTION_MODEL, load_config
from edge_agent.errors import ConfigError

MINIMAL = 'device_id = "pi-101"\nroom = "101"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_minimal_config_gets_defaults(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert config.window.length_s == 10
    assert config.window.min_faces == 5
    assert config.source.sample_fps == 2
    assert config.detector.backend == "blazeface"
    assert config.classifier.model == DEFAULT_EMOTION_MODEL


def test_relative_paths_follow_the_config_file(tmp_path):
    text = MINIMAL + '[source]\nkind = "video"\nuri = "clips/a.mp4"\n[classifier]\nmodel = "m/e.tflite"\n'
    config = load_config(write(tmp_path, text))
    assert config.source.uri == str(tmp_path / "clips/a.mp4")
    assert config.classifier.model == tmp_path / "m/e.tflite"


def test_camera_uri_is_not_a_path(tmp_path):
    config = load_config(write(tmp_path, MINIMAL + '[source]\nkind = "camera"\nuri = "0"\n'))
    assert config.source.uri == "0"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL + "[window]\nlenght_s = 5\n", ["window.lenght_s = 5", "remove it or check its spelling"]),
        (MINIMAL + "[window]\nmin_faces = 0\n", ["window.min_faces = 0", "greater than or equal to 1"]),
        (MINIMAL + '[detector]\nbackend = "yolo"\n', ["detector.backend = 'yolo'", "'blazeface' or 'haar'"]),
        (MINIMAL + "[mqtt]\nport = 70000\n", ["mqtt.port = 70000"]),
        ('room = "101"\n', ["device_id = (not set)", "add it"]),
        (MINIMAL.replace("pi-101", "pi/101"), ["device_id = 'pi/101'"]),
        (MINIMAL + '[source]\nstart = "2026-03-02T08:00:00"\n', ["source.start", "add a UTC offset"]),
    ],
)
def test_invalid_setting_names_key_value_and_fix(tmp_path, text, expected):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    for fragment in expected:
        assert fragment in str(error.value)


def test_every_error_is_listed(tmp_path):
    text = MINIMAL + "[window]\nmin_faces = 0\nlength_s = 0\n"
    with pytest.raises(ConfigError, match="2 invalid setting"):
        load_config(write(tmp_path, text))


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="Config file not found"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(write(tmp_path, "device_id = \n"))


def test_check_config_exit_codes(tmp_path, capsys):
    assert main(["check-config", str(write(tmp_path, MINIMAL))]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["check-config", str(write(tmp_path, MINIMAL + "[mqtt]\nport = 0\n"))]) == 2
    assert "mqtt.port = 0" in capsys.readouterr().err
