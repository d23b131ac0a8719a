"""Broker authentication and TLS: a private Mosquitto that requires a password over TLS."""

from __future__ import annotations

import ssl
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from aggregator.errors import BrokerError, ConfigError
from aggregator.ingest import Ingest, IngestSettings
from aggregator.store import Store
from edge_agent.payload import window_topic
from tests.conftest import REPO_ROOT, Broker, start_mosquitto, stop_mosquitto
from tests.test_aggregator_helpers import PREFIX, make_window, wait_until

PASSWORD = "s3cret-Pa55word"


@dataclass(frozen=True)
class SecureBroker:
    broker: Broker
    ca_file: Path


def _openssl(*arguments: str, cwd: Path) -> None:
    subprocess.run(["openssl", *arguments], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory):
    tmp_path = tmp_path_factory.mktemp("secure-broker")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=tmp_path)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", "server.key", "-out", "server.csr", cwd=tmp_path)
    (tmp_path / "san.ext").write_text("subjectAltName = IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "server.crt", cwd=tmp_path)
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(tmp_path / "passwords"), "aggregator", PASSWORD],
        check=True, capture_output=True,
    )
    broker = start_mosquitto(
        tmp_path,
        extra_config=(
            # As root, mosquitto would switch to its own user, which cannot read pytest's private tmp_path.
            "user root\n"
            f"allow_anonymous false\npassword_file {tmp_path / 'passwords'}\n"
            f"cafile {tmp_path / 'ca.crt'}\ncertfile {tmp_path / 'server.crt'}\nkeyfile {tmp_path / 'server.key'}\n"
        ),
    )
    yield SecureBroker(broker, tmp_path / "ca.crt")
    stop_mosquitto(broker)


def secure_settings(secure: SecureBroker, password: str) -> IngestSettings:
    return IngestSettings(
        host="127.0.0.1",
        port=secure.broker.port,
        topic_prefix=PREFIX,
        client_id="aggregator-secure",
        username="aggregator",
        password=password,
        ca_file=secure.ca_file,
    )


def test_tls_password_ingest(secure_broker: SecureBroker, tmp_path: Path) -> None:
    window = make_window("cam-1", datetime(2026, 3, 2, 8, 0, tzinfo=UTC), {"happy": 3})
    with Store.open(f"sqlite:///{tmp_path / 'aggregator.db'}") as store:
        ingest = Ingest(store, secure_settings(secure_broker, PASSWORD))
        ingest.start()
        try:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="secure-publisher", protocol=MQTTProtocolVersion.MQTTv5)
            client.username_pw_set("aggregator", PASSWORD)
            client.tls_set(ca_certs=str(secure_broker.ca_file), cert_reqs=ssl.CERT_REQUIRED)
            client.connect("127.0.0.1", secure_broker.broker.port)
            client.loop_start()
            client.publish(window_topic(PREFIX, "cam-1"), window.to_json(), qos=1).wait_for_publish(20)
            wait_until(lambda: store.count_windows() == 1, "window stored over TLS")
            client.disconnect()
            client.loop_stop()
        finally:
            ingest.stop()


def test_wrong_password_rejected(secure_broker: SecureBroker, tmp_path: Path, caplog) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'aggregator.db'}") as store:
        ingest = Ingest(store, secure_settings(secure_broker, "wrong-password"))
        with pytest.raises(BrokerError) as raised:
            ingest.start()

    message = str(raised.value)
    assert "user aggregator" in message
    assert "TLS on" in message
    assert "wrong-password" not in message
    assert "wrong-password" not in caplog.text


def test_run_password_file_not_logged(secure_broker: SecureBroker, tmp_path: Path) -> None:
    password_file = tmp_path / "mqtt-password"
    password_file.write_text("not-the-password\n")
    command = [
        sys.executable, "-m", "aggregator", "--log-level", "DEBUG", "run", "--db", f"sqlite:///{tmp_path / 'aggregator.db'}",
        "--host", "127.0.0.1", "--port", str(secure_broker.broker.port), "--username", "aggregator",
        "--password-file", str(password_file), "--ca-file", str(secure_broker.ca_file),
    ]

    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)

    assert result.returncode == 1
    assert "rejected the connection" in result.stderr
    assert "not-the-password" not in result.stderr


def test_settings_invalid_tls_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--ca-file"):
        IngestSettings(ca_file=tmp_path / "missing.crt")
    with pytest.raises(ConfigError, match="without a username"):
        IngestSettings(password="x")


def test_settings_repr_hides_password() -> None:
    assert "hunter2" not in repr(IngestSettings(username="u", password="hunter2"))
