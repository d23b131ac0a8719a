"""The Ansible deployment in deploy/: lint, a real staged run on localhost, and its broker config.

The staged run applies site.yml to localhost (connection: local) with every path under a
temporary staging root, apt skipped (tag ``packages``) and no users or services touched
(``deploy_manage_system: false``). pip installs the wheel with --no-deps, so no package index
is needed; the rendered agent config is therefore validated with the repository's own
``edge-agent``. The broker tests start a real Mosquitto from the generated config.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, free_port, wait_for_port

paho_client = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.reasoncodes import ReasonCode  # noqa: E402

DEPLOY_DIR = REPO_ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = VENV_BIN / "ansible-playbook"
ANSIBLE_LINT = VENV_BIN / "ansible-lint"
EDGE_AGENT = VENV_BIN / "edge-agent"
TOPIC_PREFIX = "classroom"
MQTT_TIMEOUT_S = 10.0

# Skipped without Ansible, except in CI (CI=true), where a missing install must fail the run.
pytestmark = pytest.mark.skipif(
    not ANSIBLE_PLAYBOOK.exists() and not os.environ.get("CI"),
    reason="ansible-core is not installed in this environment: pip install the project's deploy extra",
)


@dataclass(frozen=True)
class Staging:
    """A finished staged run of site.yml and what the tests read from it."""

    directory: Path
    server_root: Path
    pi_root: Path
    credentials_dir: Path
    broker_port: int
    first_recap: dict[str, dict[str, int]]
    second_recap: dict[str, dict[str, int]]
    second_changed_tasks: list[str]


def ansible_environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["ANSIBLE_CONFIG"] = str(DEPLOY_DIR / "ansible.cfg")
    environment["ANSIBLE_NOCOLOR"] = "1"
    environment["ANSIBLE_FORCE_COLOR"] = "0"
    # The venv's bin folder contains ansible-* and is not on PATH when pytest runs as .venv/bin/python.
    environment["PATH"] = f"{VENV_BIN}{os.pathsep}{environment.get('PATH', '')}"
    return environment


def write_inventory(directory: Path, broker_port: int) -> Path:
    """Write a staging inventory: a server (broker, aggregator) and one Pi, all on localhost."""
    server_root = directory / "server"
    pi_root = directory / "pi"
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "deploy_manage_system": False,
                "deploy_credentials_dir": str(directory / "credentials"),
                "mqtt_broker_host": "127.0.0.1",
                "broker_plain_port": broker_port,
                "broker_group": "root",
                # The broker accounts cover a second device that has no Pi in this run.
                "broker_device_group": "mqtt_devices",
            },
            "children": {
                "broker": {
                    "hosts": {
                        "stage-server": {
                            "deploy_root": str(server_root),
                            "broker_config_dir_at_runtime": str(server_root / "etc/mosquitto"),
                            "aggregator_pip_extra_args": "--no-deps",
                        }
                    }
                },
                "aggregator": {"hosts": {"stage-server": {}}},
                "edge": {
                    "children": {
                        "room_test": {
                            "vars": {"edge_agent_room": "Test room"},
                            "hosts": {
                                "pi-test": {
                                    "deploy_root": str(pi_root),
                                    "edge_agent_pip_extra_args": "--no-deps",
                                    "edge_agent_check_config_command": f"{EDGE_AGENT} check-config %s",
                                    "edge_agent_paths_in_config_prefix": str(pi_root),
                                    "edge_agent_budget_mib": 200,
                                }
                            },
                        }
                    }
                },
                "mqtt_devices": {"children": {"edge": {}}, "hosts": {"pi-other": {}}},
            },
        }
    }
    path = directory / "hosts.json"
    path.write_text(json.dumps(inventory, indent=2))
    return path


def run_playbook(inventory: Path, directory: Path) -> subprocess.CompletedProcess:
    extra_vars = {
        "deploy_wheel_dir": str(directory / "dist"),
        # The repository's venv has setuptools, so the wheel builds without a package index.
        "deploy_wheel_build_options": ["--no-build-isolation"],
    }
    return subprocess.run(
        [
            str(ANSIBLE_PLAYBOOK),
            "-i",
            str(inventory),
            "site.yml",
            "--skip-tags",
            "packages",
            "-e",
            json.dumps(extra_vars),
        ],
        cwd=DEPLOY_DIR,
        env=ansible_environment(),
        capture_output=True,
        text=True,
        timeout=900,
    )


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """Return the PLAY RECAP counters per host, such as {'pi-test': {'changed': 0, ...}}."""
    recap = {}
    for line in output.split("PLAY RECAP", 1)[-1].splitlines():
        match = re.match(r"^(\S+)\s+:\s+(.*)$", line)
        if match:
            counters = re.findall(r"(\w+)=(\d+)", match.group(2))
            recap[match.group(1)] = {key: int(value) for key, value in counters}
    return recap


def list_changed_tasks(output: str) -> list[str]:
    """Return 'TASK name: host' for every task result reported as changed."""
    changed = []
    task = ""
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line.strip("* ")
        match = re.match(r"^changed: \[([^\]]+)\]", line)
        if match:
            changed.append(f"{task}: {match.group(1)}")
    return changed


@pytest.fixture(scope="module")
def staging(tmp_path_factory: pytest.TempPathFactory) -> Staging:
    directory = tmp_path_factory.mktemp("deploy-staging")
    broker_port = free_port()
    inventory = write_inventory(directory, broker_port)

    first = run_playbook(inventory, directory)
    assert first.returncode == 0, f"first run failed:\n{first.stdout[-6000:]}\n{first.stderr[-3000:]}"
    second = run_playbook(inventory, directory)
    assert second.returncode == 0, f"second run failed:\n{second.stdout[-6000:]}\n{second.stderr[-3000:]}"

    return Staging(
        directory=directory,
        server_root=directory / "server",
        pi_root=directory / "pi",
        credentials_dir=directory / "credentials",
        broker_port=broker_port,
        first_recap=parse_recap(first.stdout),
        second_recap=parse_recap(second.stdout),
        second_changed_tasks=list_changed_tasks(second.stdout),
    )


def test_playbooks_syntax_check() -> None:
    for playbook in ("site.yml", "rollout-model.yml"):
        result = subprocess.run(
            [str(ANSIBLE_PLAYBOOK), "--syntax-check", playbook],
            cwd=DEPLOY_DIR,
            env=ansible_environment(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"{playbook}: {result.stdout}\n{result.stderr}"


def test_ansible_lint_production_profile() -> None:
    # deploy/.ansible-lint sets the production profile and offline mode (no Galaxy downloads).
    result = subprocess.run(
        [str(ANSIBLE_LINT), "--nocolor", "--offline"],
        cwd=DEPLOY_DIR,
        env=ansible_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


@pytest.mark.slow
def test_staged_run_changes_first(staging: Staging) -> None:
    assert staging.first_recap["pi-test"]["changed"] > 0
    assert staging.first_recap["stage-server"]["changed"] > 0
    assert all(counts["failed"] == 0 for counts in staging.first_recap.values())


@pytest.mark.slow
def test_second_run_changes_nothing(staging: Staging) -> None:
    for host in ("pi-test", "stage-server", "localhost"):
        assert staging.second_recap[host]["changed"] == 0, f"{host}: {staging.second_changed_tasks}"
        assert staging.second_recap[host]["failed"] == 0, f"{host}: {staging.second_recap[host]}"


@pytest.mark.slow
def test_agent_config_validates(staging: Staging) -> None:
    config = staging.pi_root / "etc/edge-agent/agent.toml"
    result = subprocess.run(
        [str(EDGE_AGENT), "check-config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    text = config.read_text()
    assert 'device_id = "pi-test"' in text
    assert 'room = "Test room"' in text
    assert 'username = "pi-test"' in text
    assert f"port = {staging.broker_port}" in text


@pytest.mark.slow
def test_agent_config_check_rejects_typo(staging: Staging, tmp_path: Path) -> None:
    # The same check the role runs must fail on a broken config, or the test above proves nothing.
    broken = tmp_path / "agent.toml"
    text = (staging.pi_root / "etc/edge-agent/agent.toml").read_text()
    broken.write_text(text.replace("min_faces = 5", "min_facez = 5"))
    result = subprocess.run(
        [str(EDGE_AGENT), "check-config", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "min_facez" in result.stderr


@pytest.mark.slow
def test_model_matches_card(staging: Staging) -> None:
    card = json.loads((REPO_ROOT / "edge_agent/models/emotion_mini_xception_int8.json").read_text())
    model_dir = staging.pi_root / "opt/classroom-emotion-stats/models" / card["sha256"][:16]
    digest = hashlib.sha256((model_dir / card["file_name"]).read_bytes()).hexdigest()
    assert digest == card["sha256"]
    assert (model_dir / "emotion_mini_xception_int8.json").exists()


@pytest.mark.slow
def test_password_files_private(staging: Staging) -> None:
    paths = [
        staging.pi_root / "etc/edge-agent/mqtt-password",
        staging.server_root / "etc/aggregator/aggregator-mqtt-password",
        staging.server_root / "etc/mosquitto/classroom/passwd",
    ]
    for path in paths:
        mode = path.stat().st_mode & 0o777
        assert mode & 0o007 == 0, f"{path} is readable by others: {oct(mode)}"
    device_password = (staging.credentials_dir / "mqtt/pi-test.password").read_text().split()[0]
    assert (staging.pi_root / "etc/edge-agent/mqtt-password").read_text().strip() == device_password
    assert len(device_password) == 32


def systemd_root(staging_root: Path) -> Path:
    """Make systemd's own units visible under a staging root, for systemd-analyze verify --root."""
    units = staging_root / "usr/lib/systemd"
    if not units.exists():
        units.parent.mkdir(parents=True, exist_ok=True)
        units.symlink_to("/usr/lib/systemd")
    return staging_root


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize(
    ("host", "unit"),
    [
        ("pi", "edge-agent.service"),
        ("server", "aggregator.service"),
        ("server", "aggregator-purge.service"),
        ("server", "aggregator-purge.timer"),
    ],
)
def test_unit_verifies(staging: Staging, host: str, unit: str) -> None:
    root = systemd_root(staging.pi_root if host == "pi" else staging.server_root)
    assert (root / "etc/systemd/system" / unit).exists()
    # --root resolves ExecStart= inside the staging root, where the role installed the venv.
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", f"/etc/systemd/system/{unit}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [line for line in result.stderr.splitlines() if unit.split(".")[0] in line]
    assert result.returncode == 0, "\n".join(problems) or result.stderr[-2000:]


@pytest.mark.slow
def test_memory_dropin_follows_budget(staging: Staging) -> None:
    dropin = staging.pi_root / "etc/systemd/system/edge-agent.service.d/memory.conf"
    text = dropin.read_text()
    assert "MemoryHigh=200M" in text
    assert "MemoryMax=250M" in text


# The broker: the generated config in a real Mosquitto.


@pytest.fixture(scope="module")
def staged_broker(staging: Staging) -> Iterator[int]:
    """Start Mosquitto the way Debian does: a main config that includes the role's conf.d."""
    executable = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(executable).exists():
        pytest.fail(
            "mosquitto is not installed: run 'make test', which installs it, or apt install mosquitto"
        )
    main_config = staging.directory / "mosquitto.conf"
    # The staged files belong to root:root, not root:mosquitto as on a server, and lie below pytest's
    # private temporary folder, so the broker keeps running as root here instead of dropping to mosquitto.
    main_config.write_text(
        "user root\n"
        "persistence false\n"
        "log_dest stderr\n"
        "log_type error\n"
        "log_type warning\n"
        f"include_dir {staging.server_root / 'etc/mosquitto/conf.d'}\n"
    )
    process = subprocess.Popen(
        [executable, "-c", str(main_config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for_port("127.0.0.1", staging.broker_port)
    except TimeoutError:
        process.kill()
        _, stderr = process.communicate(timeout=5)
        pytest.fail(f"mosquitto did not start with the generated config: {stderr.decode(errors='replace')}")
    yield staging.broker_port
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Client:
    """A paho MQTT 5 client that records its CONNACK, PUBACKs and received messages."""

    def __init__(self, port: int, username: str | None, password: str | None) -> None:
        self.connected = threading.Event()
        self.connect_reason: ReasonCode | None = None
        self.subscribed = threading.Event()
        self.granted: list[ReasonCode] = []
        self.published: dict[int, threading.Event] = {}
        self.publish_reasons: dict[int, ReasonCode] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.message_arrived = threading.Event()
        self.mqtt = paho_client.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-{username or 'anonymous'}",
            protocol=paho_client.MQTTv5,
        )
        if username is not None:
            self.mqtt.username_pw_set(username, password)
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_subscribe = self._on_subscribe
        self.mqtt.on_publish = self._on_publish
        self.mqtt.on_message = self._on_message
        self.mqtt.connect("127.0.0.1", port)
        self.mqtt.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connect_reason = reason_code
        self.connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self.granted = list(reason_codes)
        self.subscribed.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self.publish_reasons[mid] = reason_code
        self.published.setdefault(mid, threading.Event()).set()

    def _on_message(self, client, userdata, message) -> None:
        self.messages.append((message.topic, message.payload))
        self.message_arrived.set()

    def wait_connected(self) -> ReasonCode:
        assert self.connected.wait(MQTT_TIMEOUT_S), "no CONNACK"
        assert self.connect_reason is not None
        return self.connect_reason

    def subscribe(self, topic: str) -> list[ReasonCode]:
        self.subscribed.clear()
        self.mqtt.subscribe(topic, qos=1)
        assert self.subscribed.wait(MQTT_TIMEOUT_S), f"no SUBACK for {topic}"
        return self.granted

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        info = self.mqtt.publish(topic, payload, qos=1)
        event = self.published.setdefault(info.mid, threading.Event())
        assert event.wait(MQTT_TIMEOUT_S), f"no PUBACK for {topic}"
        return self.publish_reasons[info.mid]

    def close(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


def read_password(staging: Staging, username: str) -> str:
    return (staging.credentials_dir / "mqtt" / f"{username}.password").read_text().split()[0]


@pytest.fixture
def aggregator_client(staging: Staging, staged_broker: int) -> Iterator[Client]:
    client = Client(staged_broker, "aggregator", read_password(staging, "aggregator"))
    assert not client.wait_connected().is_failure
    yield client
    client.close()


@pytest.fixture
def device_client(staging: Staging, staged_broker: int) -> Iterator[Client]:
    client = Client(staged_broker, "pi-test", read_password(staging, "pi-test"))
    assert not client.wait_connected().is_failure
    yield client
    client.close()


@pytest.mark.slow
def test_broker_rejects_anonymous(staged_broker: int) -> None:
    client = Client(staged_broker, None, None)
    try:
        reason = client.wait_connected()
        assert reason.is_failure
        assert reason.getName() == "Not authorized"
    finally:
        client.close()


@pytest.mark.slow
def test_broker_rejects_wrong_password(staged_broker: int) -> None:
    client = Client(staged_broker, "pi-test", "not-the-password")
    try:
        reason = client.wait_connected()
        assert reason.is_failure
        assert reason.getName() in ("Not authorized", "Bad user name or password")
    finally:
        client.close()


@pytest.mark.slow
def test_aggregator_reads_every_device(
    staging: Staging, aggregator_client: Client, device_client: Client, staged_broker: int
) -> None:
    granted = aggregator_client.subscribe(f"{TOPIC_PREFIX}/#")
    assert [code.value for code in granted] == [1]

    other = Client(staged_broker, "pi-other", read_password(staging, "pi-other"))
    try:
        assert not other.wait_connected().is_failure
        assert not device_client.publish(f"{TOPIC_PREFIX}/pi-test/window", b"from pi-test").is_failure
        assert not other.publish(f"{TOPIC_PREFIX}/pi-other/window", b"from pi-other").is_failure
    finally:
        other.close()

    expected = {
        (f"{TOPIC_PREFIX}/pi-test/window", b"from pi-test"),
        (f"{TOPIC_PREFIX}/pi-other/window", b"from pi-other"),
    }
    deadline_checks = 100
    while deadline_checks and not expected <= set(aggregator_client.messages):
        aggregator_client.message_arrived.wait(0.1)
        aggregator_client.message_arrived.clear()
        deadline_checks -= 1
    assert expected <= set(aggregator_client.messages), aggregator_client.messages


@pytest.mark.slow
def test_device_cannot_publish_as_another(aggregator_client: Client, device_client: Client) -> None:
    aggregator_client.subscribe(f"{TOPIC_PREFIX}/#")

    reason = device_client.publish(f"{TOPIC_PREFIX}/pi-other/window", b"forged")
    assert reason.getName() == "Not authorized"
    reason = device_client.publish("elsewhere/window", b"outside the prefix")
    assert reason.getName() == "Not authorized"

    # A window of its own, sent after the forged ones, marks the point by which they would have arrived.
    assert not device_client.publish(f"{TOPIC_PREFIX}/pi-test/window", b"marker").is_failure
    assert aggregator_client.message_arrived.wait(MQTT_TIMEOUT_S)
    for _ in range(50):
        if (f"{TOPIC_PREFIX}/pi-test/window", b"marker") in aggregator_client.messages:
            break
        aggregator_client.message_arrived.clear()
        aggregator_client.message_arrived.wait(0.1)
    payloads = [payload for _, payload in aggregator_client.messages]
    assert b"marker" in payloads
    assert b"forged" not in payloads
    assert b"outside the prefix" not in payloads


@pytest.mark.slow
def test_device_cannot_read_another(
    staging: Staging, aggregator_client: Client, device_client: Client, staged_broker: int
) -> None:
    # Mosquitto 2.0 grants the subscription and applies the read ACL to each delivery.
    device_client.subscribe(f"{TOPIC_PREFIX}/#")
    other = Client(staged_broker, "pi-other", read_password(staging, "pi-other"))
    try:
        assert not other.wait_connected().is_failure
        assert not other.publish(f"{TOPIC_PREFIX}/pi-other/window", b"window of pi-other").is_failure
    finally:
        other.close()

    # A command to pi-test, sent after that window, marks the point by which the window would have arrived.
    assert not aggregator_client.publish(f"{TOPIC_PREFIX}/pi-test/command", b"marker").is_failure
    for _ in range(100):
        if (f"{TOPIC_PREFIX}/pi-test/command", b"marker") in device_client.messages:
            break
        device_client.message_arrived.clear()
        device_client.message_arrived.wait(0.1)
    payloads = [payload for _, payload in device_client.messages]
    assert b"marker" in payloads
    assert b"window of pi-other" not in payloads
