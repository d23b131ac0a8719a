"""Shared fixtures: paths to the bundled real media and a private Mosquitto broker."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
MEDIA_DIR = DATA_DIR / "media"
LABELLED_DIR = DATA_DIR / "labelled"


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    process: subprocess.Popen
    config_path: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s} s")


def start_mosquitto(directory: Path, port: int | None = None, extra_config: str = "") -> Broker:
    """Start a private mosquitto on a free loopback port with the given extra config lines."""
    executable = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(executable).exists():
        pytest.fail("mosquitto is not installed: run 'make test', which installs it, or apt install mosquitto")
    port = port or free_port()
    config_path = directory / f"mosquitto-{port}.conf"
    config_path.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "log_dest stderr\n"
        "log_type error\n"
        "log_type warning\n" + extra_config
    )
    process = subprocess.Popen(
        [executable, "-c", str(config_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for_port("127.0.0.1", port)
    except TimeoutError:
        process.kill()
        _, stderr = process.communicate(timeout=5)
        pytest.fail(f"private mosquitto did not start: {stderr.decode(errors='replace')}")
    return Broker("127.0.0.1", port, process, config_path)


def stop_mosquitto(broker: Broker) -> None:
    if broker.process.poll() is None:
        broker.process.terminate()
        try:
            broker.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            broker.process.kill()
            broker.process.wait()


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[Broker]:
    """A private mosquitto on a free 127.0.0.1 port, stopped after the test."""
    broker = start_mosquitto(tmp_path)
    yield broker
    stop_mosquitto(broker)
