"""The broker role with TLS certificates, applied to a staging root and run in a real Mosquitto."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, free_port, wait_for_port

paho_client = pytest.importorskip("paho.mqtt.client")
pytest.importorskip("cryptography.x509")
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from tests.certificates import make_certificates  # noqa: E402

DEPLOY_DIR = REPO_ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = VENV_BIN / "ansible-playbook"
MQTT_TIMEOUT_S = 10.0

# Skipped without Ansible, except in CI (CI=true), where a missing install must fail the run.
pytestmark = pytest.mark.skipif(
    not ANSIBLE_PLAYBOOK.exists() and not os.environ.get("CI"),
    reason="ansible-core is not installed in this environment: pip install the project's deploy extra",
)


@dataclass(frozen=True)
class TlsBroker:
    """A running Mosquitto configured by the broker role with TLS."""

    root: Path
    ca_file: Path
    plain_port: int
    tls_port: int
    device_password: str


def apply_broker_role(
    directory: Path, ca: Path, cert: Path, key: Path, plain_port: int, tls_port: int
) -> Path:
    """Apply only the broker role to localhost under a staging root and return that root."""
    root = directory / "server"
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "deploy_manage_system": False,
                "deploy_credentials_dir": str(directory / "credentials"),
                "broker_group": "root",
                "broker_tls_ca_file": str(ca),
                "broker_tls_cert_file": str(cert),
                "broker_tls_key_file": str(key),
                "broker_plain_port": plain_port,
                "broker_tls_port": tls_port,
            },
            "children": {
                "broker": {
                    "hosts": {
                        "tls-server": {
                            "deploy_root": str(root),
                            "broker_config_dir_at_runtime": str(root / "etc/mosquitto"),
                        }
                    }
                },
                "edge": {"hosts": {"pi-tls": {}}},
            },
        }
    }
    inventory_path = directory / "hosts.json"
    inventory_path.write_text(json.dumps(inventory))
    playbook = directory / "broker.yml"
    playbook.write_text("- name: Broker only\n  hosts: broker\n  roles:\n    - role: broker\n")
    environment = {
        **os.environ,
        "ANSIBLE_CONFIG": str(DEPLOY_DIR / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(DEPLOY_DIR / "roles"),
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    result = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(inventory_path), str(playbook), "--skip-tags", "packages"],
        cwd=DEPLOY_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    return root


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    directory = tmp_path_factory.mktemp("deploy-tls")
    ca, cert, key = make_certificates(directory)
    plain_port = free_port()
    tls_port = free_port()
    root = apply_broker_role(directory, ca, cert, key, plain_port, tls_port)

    executable = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(executable).exists():
        pytest.fail(
            "mosquitto is not installed: run 'make test', which installs it, or apt install mosquitto"
        )
    main_config = directory / "mosquitto.conf"
    # Root keeps the staged root-owned files readable; a server has them in group mosquitto.
    main_config.write_text(
        "user root\npersistence false\nlog_dest stderr\nlog_type error\n"
        f"include_dir {root / 'etc/mosquitto/conf.d'}\n"
    )
    process = subprocess.Popen(
        [executable, "-c", str(main_config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for_port("127.0.0.1", tls_port)
    except TimeoutError:
        process.kill()
        _, stderr = process.communicate(timeout=5)
        pytest.fail(f"mosquitto did not start with the TLS config: {stderr.decode(errors='replace')}")
    password = (directory / "credentials/mqtt/pi-tls.password").read_text().split()[0]
    yield TlsBroker(root, ca, plain_port, tls_port, password)
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def connect(port: int, username: str, password: str, ca_file: Path | None) -> tuple[bool, str]:
    """Connect over TLS (trusting ca_file, else the system CAs); return (accepted, reason)."""
    connected = threading.Event()
    outcome: dict[str, object] = {}

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        outcome["reason"] = reason_code
        connected.set()

    client = paho_client.Client(
        CallbackAPIVersion.VERSION2, client_id=f"tls-{username}", protocol=paho_client.MQTTv5
    )
    client.username_pw_set(username, password)
    client.tls_set(ca_certs=str(ca_file) if ca_file else None)
    client.on_connect = on_connect
    try:
        client.connect("127.0.0.1", port)
    except ssl.SSLError as error:
        return False, f"TLS failed: {error}"
    client.loop_start()
    try:
        assert connected.wait(MQTT_TIMEOUT_S), "no CONNACK"
        reason = outcome["reason"]
        return not reason.is_failure, reason.getName()
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.slow
def test_tls_device_connects(tls_broker: TlsBroker) -> None:
    accepted, reason = connect(tls_broker.tls_port, "pi-tls", tls_broker.device_password, tls_broker.ca_file)
    assert accepted, reason


@pytest.mark.slow
def test_tls_untrusted_ca_rejected(tls_broker: TlsBroker) -> None:
    # The system CAs did not sign the test server certificate, so the client must reject it.
    accepted, reason = connect(tls_broker.tls_port, "pi-tls", tls_broker.device_password, None)
    assert not accepted
    assert reason.startswith("TLS failed")


@pytest.mark.slow
def test_tls_plain_listener_loopback_only(tls_broker: TlsBroker) -> None:
    config = (tls_broker.root / "etc/mosquitto/conf.d/classroom.conf").read_text()
    assert f"listener {tls_broker.plain_port} 127.0.0.1\n" in config
    assert f"listener {tls_broker.tls_port}\n" in config
    assert "allow_anonymous false" in config


@pytest.mark.slow
def test_tls_key_not_world_readable(tls_broker: TlsBroker) -> None:
    key = tls_broker.root / "etc/mosquitto/classroom/certs/server.key"
    assert key.stat().st_mode & 0o007 == 0
