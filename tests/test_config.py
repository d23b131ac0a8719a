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
        (MINIMAL + "budget_mib = 16\n", ["budget_mib = 16", "greater than or equal to 32"]),
        (MINIMAL + '[outbox]\nwhen_full = "block"\n', ["outbox.when_full = 'block'", "'drop_oldest' or 'drop_newest'"]),
        (MINIMAL + "[outbox]\nmax_windows = 1\n", ["outbox.max_windows = 1", "greater than or equal to 10"]),
        (MINIMAL + "[mqtt]\nmax_inflight = 0\n", ["mqtt.max_inflight = 0"]),
        (MINIMAL + "[mqtt]\nstats_interval_s = 0\n", ["mqtt.stats_interval_s = 0"]),
        (MINIMAL + '[mqtt]\npassword_env = "MQTT_PASSWORD"\n', ["mqtt = (section)", "a password needs a username"]),
        (
            MINIMAL + '[mqtt]\nusername = "u"\npassword_env = "A"\npassword_file = "p"\n',
            ["set password_file or password_env, not both"],
        ),
        (MINIMAL + '[mqtt]\ncert_file = "c.pem"\n', ["cert_file and key_file go together"]),
        (MINIMAL + '[mqtt]\npassword_env = "1BAD"\nusername = "u"\n', ["mqtt.password_env = '1BAD'"]),
        (MINIMAL + '[source]\nkind = "video"\nuri = "a.mp4"\non_loss = "reconnect"\n', ["applies to live sources only"]),
        (MINIMAL + "[source]\nreconnect_min_s = 10\nreconnect_max_s = 5\n", ["reconnect_max_s (5.0) is below"]),
        (MINIMAL + '[source]\npixel_format = "YUV420"\n', ["source.pixel_format = 'YUV420'"]),
        (MINIMAL + '[source]\non_loss = "retry"\n', ["source.on_loss = 'retry'"]),
        (MINIMAL + "[source]\nsample_fps = 4\ncapture_fps = 2\n", ["capture_fps (2.0) is below sample_fps (4.0)"]),
        (MINIMAL + "[source]\ncapture_fps = 0\n", ["source.capture_fps = 0"]),
        (MINIMAL + '[source]\nkind = "video"\nuri = "a.mp4"\ncapture_fps = 5\n', ["capture_fps applies to cameras only"]),
        (MINIMAL + "[source]\nstart = 0026-03-02T08:15:00+01:00\n", ["use a year from 1970 to 9000"]),
        (MINIMAL + "[window]\nlength_s = true\n", ["window.length_s = True", "write a number without quotes"]),
        (MINIMAL + 'budget_mib = "256"\n', ["budget_mib = '256'", "write a whole number without quotes"]),
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


def test_outbox_path_follows_state_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    config = load_config(write(tmp_path, MINIMAL))
    assert config.outbox.path == tmp_path / "state" / "outbox.sqlite3"


def test_outbox_path_follows_config_file(tmp_path, monkeypatch):
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    config = load_config(write(tmp_path, MINIMAL + '[outbox]\npath = "q/o.db"\n'))
    assert config.outbox.path == tmp_path / "q" / "o.db"


def test_loss_policy_defaults_by_kind(tmp_path):
    camera = load_config(write(tmp_path, MINIMAL + '[source]\nkind = "camera"\n'))
    video = load_config(write(tmp_path, MINIMAL + '[source]\nkind = "video"\nuri = "a.mp4"\n'))
    assert camera.source.loss_policy == "reconnect"
    assert video.source.loss_policy == "stop"


def test_check_config_missing_tls_file(tmp_path, capsys):
    text = MINIMAL + '[mqtt]\nca_file = "absent-ca.pem"\n'
    assert main(["check-config", str(write(tmp_path, text))]) == 2
    assert "mqtt.ca_file" in capsys.readouterr().err


def test_check_config_missing_password_file(tmp_path, capsys):
    text = MINIMAL + '[mqtt]\nusername = "pi"\npassword_file = "absent-password"\n'
    assert main(["check-config", str(write(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert "mqtt.password_file" in err
    assert "absent-password" in err


def test_check_config_unset_password_env(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("EDGE_TEST_PASSWORD", raising=False)
    text = MINIMAL + '[mqtt]\nusername = "pi"\npassword_env = "EDGE_TEST_PASSWORD"\n'
    assert main(["check-config", str(write(tmp_path, text))]) == 2
    assert "EDGE_TEST_PASSWORD (mqtt.password_env) is unset" in capsys.readouterr().err


def test_check_config_never_prints_password(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGE_TEST_PASSWORD", "s3cret-value")
    text = MINIMAL + '[mqtt]\nusername = "pi"\npassword_env = "EDGE_TEST_PASSWORD"\n'
    assert main(["check-config", str(write(tmp_path, text))]) == 0
    output = capsys.readouterr()
    assert "s3cret-value" not in output.out + output.err


def test_check_config_budget_too_small(tmp_path, capsys):
    text = MINIMAL + "budget_mib = 64\n[source]\nwidth = 7680\nheight = 4320\n"
    assert main(["check-config", str(write(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert "budget_mib = 64" in err
    assert "lower [source] width and height (now 7680x4320)" in err


def test_check_config_missing_video(tmp_path, capsys):
    text = MINIMAL + '[source]\nkind = "video"\nuri = "absent.mp4"\n'
    assert main(["check-config", str(write(tmp_path, text))]) == 2
    assert "absent.mp4" in capsys.readouterr().err


def test_check_config_prints_memory_limits(tmp_path, capsys):
    assert main(["check-config", str(write(tmp_path, MINIMAL + "budget_mib = 200\n"))]) == 0
    assert "MemoryHigh=200M MemoryMax=250M" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("settings", "expected_fps"),
    [("", 5.0), ("sample_fps = 4\n", 8.0), ("sample_fps = 25\n", 30.0), ("capture_fps = 12\n", 12.0)],
)
def test_camera_frame_rate_follows_sampling(tmp_path, settings, expected_fps):
    config = load_config(write(tmp_path, MINIMAL + "[source]\n" + settings))
    assert config.source.camera_fps == expected_fps


def test_override_into_non_section(tmp_path):
    with pytest.raises(ConfigError, match=r"source = 'video' is a single value.*write it as a \[source\] table"):
        load_config(write(tmp_path, MINIMAL.replace('room = "101"\n', 'room = "101"\nsource = "video"\n')), {"source": {"uri": "x.mp4"}})


def test_check_config_loads_the_ca_file(tmp_path, capsys):
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    text = MINIMAL + '[mqtt]\nca_file = "ca.pem"\n'
    assert main(["check-config", str(write(tmp_path, text))]) == 2
    assert "contains no valid CA certificate" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kind", "uri", "expected"),
    [("video", ".", "is a folder: for photos set source.kind"), ("images", "agent.toml", "is a file: for a video")],
)
def test_check_config_source_kind_fits_the_path(tmp_path, capsys, kind, uri, expected):
    text = MINIMAL + f'[source]\nkind = "{kind}"\nuri = "{uri}"\n'
    assert main(["check-config", str(write(tmp_path, text))]) == 2
    assert expected in capsys.readouterr().err


def test_check_config_needs_the_model_card(tmp_path, capsys):
    model = tmp_path / "model.tflite"
    model.write_bytes(DEFAULT_EMOTION_MODEL.read_bytes())
    text = MINIMAL + f'[classifier]\nmodel = "{model}"\n'
    assert main(["check-config", str(write(tmp_path, text))]) == 2
    assert "Model card not found" in capsys.readouterr().err


def test_check_config_decodes_the_video(tmp_path, capsys):
    (tmp_path / "empty.mp4").write_bytes(b"")
    text = MINIMAL + '[source]\nkind = "video"\nuri = "empty.mp4"\n'
    assert main(["check-config", str(write(tmp_path, text))]) == 2
    assert "source.uri: Cannot open video" in capsys.readouterr().err


def test_check_config_warns_without_picamera2(tmp_path, capsys):
    text = MINIMAL + '[source]\nkind = "picamera2"\n'
    assert main(["check-config", str(write(tmp_path, text))]) == 0
    assert "warning: source.kind = 'picamera2', but picamera2 is not installed here" in capsys.readouterr().out
