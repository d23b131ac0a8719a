"""MQTT over TLS with username and password against a private Mosquitto configured for both."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_agent.config import MqttConfig
from edge_agent.errors import BrokerError
from edge_agent.outbox import Outbox
from edge_agent.payload import WindowReport
from edge_agent.publisher import WindowPublisher
from tests.agent_process import Recorder
from tests.certificates import make_certificates
from tests.conftest import free_port, wait_for_port

PASSWORD = "correct-horse-battery"
USERNAME = "pi-tls"


@pytest.fixture
def tls_broker(tmp_path):
    executable = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(executable).exists():
        pytest.fail("mosquitto_passwd is missing: install the mosquitto package")
    ca_path, cert_path, key_path = make_certificates(tmp_path)
    password_db = tmp_path / "mosquitto-passwords"
    subprocess.run([executable, "-c", "-b", str(password_db), USERNAME, PASSWORD], check=True)
    port = free_port()
    config_path = tmp_path / "mosquitto-tls.conf"
    # Run as root, mosquitto switches to the "mosquitto" user before it reads the password
    # file, which that user cannot open inside pytest's private temporary folder.
    user = "user root\n" if os.geteuid() == 0 else ""
    config_path.write_text(
        user + f"listener {port} 127.0.0.1\n"
        f"cafile {ca_path}\ncertfile {cert_path}\nkeyfile {key_path}\n"
        f"allow_anonymous false\npassword_file {password_db}\n"
        "persistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n"
    )
    process = subprocess.Popen(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(config_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port("127.0.0.1", port)
    except TimeoutError:
        process.kill()
        pytest.fail(f"TLS mosquitto did not start: {process.communicate(timeout=5)[1].decode(errors='replace')}")
    yield port, ca_path
    process.terminate()
    process.wait(timeout=5)


def report() -> WindowReport:
    return WindowReport(
        device_id="pi-tls",
        room="101",
        window_start=datetime(2026, 3, 2, 8, 0, tzinfo=UTC),
        window_end=datetime(2026, 3, 2, 8, 0, 10, tzinfo=UTC),
        frames_sampled=20,
        faces_seen=100,
        min_faces=5,
        suppressed=False,
        counts={"happy": 60, "sad": 40},
    )


def test_tls_with_password_delivers(tmp_path, tls_broker, caplog, monkeypatch):
    port, ca_path = tls_broker
    monkeypatch.setenv("EDGE_TEST_MQTT_PASSWORD", PASSWORD)
    recorder = Recorder("127.0.0.1", port, "classroom/pi-tls/#").start(
        username=USERNAME, password=PASSWORD, ca_file=ca_path
    )
    config = MqttConfig(
        host="127.0.0.1", port=port, ca_file=ca_path, username=USERNAME, password_env="EDGE_TEST_MQTT_PASSWORD",
        connect_timeout_s=5,
    )
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_windows=10)
    with caplog.at_level("DEBUG"):
        publisher = WindowPublisher(config, "pi-tls", outbox)
        publisher.start("active")
        assert publisher.connected
        outbox.add("2026-03-02T08:00:00Z", report().to_json())
        publisher.wake()
        result = publisher.close(drain_timeout_s=5)
    recorder.stop()
    assert result.acknowledged == 1
    assert result.pending == 0
    assert recorder.payloads("window") == [report().to_json()]
    assert recorder.payloads("status") == [b"online", b"stopped"]
    assert PASSWORD not in caplog.text


def test_tls_wrong_password_rejected(tmp_path, tls_broker):
    port, ca_path = tls_broker
    password_file = tmp_path / "password"
    password_file.write_text("wrong-password\n")
    config = MqttConfig(
        host="127.0.0.1", port=port, ca_file=ca_path, username=USERNAME, password_file=password_file,
        connect_timeout_s=5,
    )
    publisher = WindowPublisher(config, "pi-tls", Outbox(tmp_path / "outbox.sqlite3", max_windows=10))
    with pytest.raises(BrokerError, match="refused the connection") as error:
        publisher.start("active")
    assert "wrong-password" not in str(error.value)


def test_tls_unknown_ca_rejected(tmp_path, tls_broker):
    port, _ = tls_broker
    other = tmp_path / "other"
    other.mkdir()
    other_ca, _, _ = make_certificates(other)
    config = MqttConfig(host="127.0.0.1", port=port, ca_file=other_ca, connect_timeout_s=5)
    publisher = WindowPublisher(config, "pi-tls", Outbox(tmp_path / "outbox.sqlite3", max_windows=10))
    with pytest.raises(BrokerError, match="TLS handshake .* failed"):
        publisher.start("active")
