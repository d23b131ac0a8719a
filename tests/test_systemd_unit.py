"""The systemd unit: it verifies, its limits follow budget_mib, and the agent speaks sd_notify."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.budget import memory_max_mib
from edge_agent.cli import main, render_unit
from edge_agent.config import DEFAULT_BUDGET_MIB
from edge_agent.errors import ConfigError
from edge_agent.sd_notify import Watchdog
from tests.agent_process import start_agent, wait_until, write_live_config
from tests.conftest import REPO_ROOT

UNIT = REPO_ROOT / "systemd" / "edge-agent.service"


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: install systemd")
    # verify checks that ExecStart exists, so the unit points at this checkout's console script.
    executable = Path(sys.executable).parent / "edge-agent"
    text = UNIT.read_text().replace("/opt/classroom-emotion-stats/.venv/bin/edge-agent", str(executable))
    unit = tmp_path / "edge-agent.service"
    unit.write_text(text)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "edge-agent.service" not in result.stderr, result.stderr


def test_unit_hardening_settings():
    settings = unit_settings(UNIT.read_text())
    assert settings["Type"] == ["notify"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["StartLimitBurst"] == ["5"]
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["NoNewPrivileges"] == ["yes"]
    assert settings["PrivateTmp"] == ["yes"]
    assert settings["ProtectHome"] == ["yes"]
    assert settings["SupplementaryGroups"] == ["video"]
    assert settings["StateDirectory"] == ["edge-agent"]
    assert "char-video4linux rw" in settings["DeviceAllow"]
    assert int(settings["WatchdogSec"][0]) > 0


def test_unit_memory_matches_default_budget():
    settings = unit_settings(UNIT.read_text())
    assert settings["MemoryHigh"] == [f"{DEFAULT_BUDGET_MIB}M"]
    assert settings["MemoryMax"] == [f"{memory_max_mib(DEFAULT_BUDGET_MIB)}M"]


def test_rendered_unit_follows_budget(tmp_path, capsys):
    config = tmp_path / "agent.toml"
    config.write_text('device_id = "pi-1"\nroom = "1"\nbudget_mib = 300\n')
    assert main(["systemd-unit", str(config), "--config-path", "/etc/edge-agent/room1.toml"]) == 0
    settings = unit_settings(capsys.readouterr().out)
    assert settings["MemoryHigh"] == ["300M"]
    assert settings["MemoryMax"] == ["375M"]
    assert settings["ExecStart"][0].endswith("--config /etc/edge-agent/room1.toml")
    assert render_unit(DEFAULT_BUDGET_MIB, "/etc/edge-agent/agent.toml") == UNIT.read_text()


def test_watchdog_rate_limits_pings(tmp_path, monkeypatch):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    listener.settimeout(1.0)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    now = [0.0]
    watchdog = Watchdog(interval_s=10.0, clock=lambda: now[0])
    for step_s in (0.0, 1.0, 4.0, 5.0, 9.0, 10.0):
        now[0] = step_s
        watchdog.ping()
    listener.close()
    # Pings at 0, 5 and 10 s: at most one per half interval.
    assert watchdog.pings_sent == 3


def test_watchdog_ignores_other_pid(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert not Watchdog().enabled
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Watchdog().interval_s == 2.0


@pytest.mark.slow
def test_agent_notifies_ready_watchdog_stopping(tmp_path, mqtt_broker):
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(0.2)
    messages: list[bytes] = []
    # WATCHDOG_PID is left unset, as systemd does when the main process is the one it started.
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="1000000")

    def receive() -> bool:
        try:
            messages.append(listener.recv(256))
        except TimeoutError:
            pass
        return messages.count(b"WATCHDOG=1") >= 3

    agent = start_agent(write_live_config(tmp_path, mqtt_broker.port), tmp_path, env=env)
    try:
        wait_until(receive, 60, "READY=1 and three watchdog pings", agent)
        assert agent.terminate() == 0
        while True:
            try:
                messages.append(listener.recv(256))
            except TimeoutError:
                break
    finally:
        agent.kill()
        listener.close()
    assert messages.index(b"READY=1") < messages.index(b"WATCHDOG=1")
    assert b"STOPPING=1" in messages


def test_rendered_unit_runs_the_agent_beside_this_python(tmp_path, capsys):
    config = tmp_path / "agent.toml"
    config.write_text('device_id = "pi-1"\nroom = "1"\n')
    assert main(["systemd-unit", str(config)]) == 0
    exec_start = unit_settings(capsys.readouterr().out)["ExecStart"][0]
    assert exec_start.startswith(str(Path(sys.executable).absolute().parent / "edge-agent") + " run ")


def test_rendered_unit_quotes_paths_for_systemd():
    text = render_unit(DEFAULT_BUDGET_MIB, "/etc/my agent/100%$HOME.toml", "/opt/edge agent/bin/edge-agent")
    exec_start = unit_settings(text)["ExecStart"][0]
    assert exec_start == '"/opt/edge agent/bin/edge-agent" run --config "/etc/my agent/100%%$$HOME.toml"'


def test_rendered_unit_rejects_relative_paths(tmp_path, capsys):
    config = tmp_path / "agent.toml"
    config.write_text('device_id = "pi-1"\nroom = "1"\n')
    assert main(["systemd-unit", str(config), "--config-path", "agent.toml"]) == 2
    assert "--config-path 'agent.toml' is relative: systemd needs an absolute path" in capsys.readouterr().err


@pytest.mark.parametrize("path", ["/etc/a\nb.toml", "/etc/a\tb.toml"])
def test_rendered_unit_rejects_control_characters(path):
    with pytest.raises(ConfigError, match="contains a control character"):
        render_unit(DEFAULT_BUDGET_MIB, path)
