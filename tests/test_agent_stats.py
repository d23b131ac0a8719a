"""Stats snapshots: interval means, CPU temperature from a thermal folder, and the JSON round trip."""

from __future__ import annotations

from edge_agent.health import AgentCounters, HealthMonitor, read_cpu_temperature_c
from edge_agent.stats import parse_stats


def write_zone(root, name: str, zone_type: str, millidegrees: str) -> None:
    zone = root / name
    zone.mkdir()
    (zone / "type").write_text(zone_type + "\n")
    (zone / "temp").write_text(millidegrees + "\n")


def counters() -> AgentCounters:
    return AgentCounters("active", "running", 7, 1, 2, 0, 3)


def test_temperature_prefers_cpu_zone(tmp_path):
    write_zone(tmp_path, "thermal_zone0", "acpitz", "30000")
    write_zone(tmp_path, "thermal_zone1", "cpu-thermal", "61800")
    assert read_cpu_temperature_c(tmp_path) == 61.8


def test_temperature_skips_unreadable_zone(tmp_path):
    write_zone(tmp_path, "thermal_zone0", "cpu-thermal", "not a number")
    write_zone(tmp_path, "thermal_zone1", "acpitz", "42000")
    assert read_cpu_temperature_c(tmp_path) == 42.0


def test_temperature_missing_is_none(tmp_path):
    assert read_cpu_temperature_c(tmp_path / "absent") is None


def test_snapshot_means_and_reset(tmp_path):
    monitor = HealthMonitor("pi-1", budget_mib=256, thermal_dir=tmp_path)
    monitor.record_frame(100.0, 4)
    monitor.record_frame(300.0, 2)
    first = monitor.snapshot(counters())
    assert first.inference_ms == 200.0
    assert first.faces_per_frame == 3.0
    assert first.frames_total == 2
    assert first.rss_mib > 0
    assert first.budget_mib == 256
    assert first.cpu_temperature_c is None
    assert first.skipped_frames_total == 7
    second = monitor.snapshot(counters())
    assert second.inference_ms is None
    assert second.frames_per_s == 0.0
    assert second.frames_total == 2


def test_stats_json_round_trip(tmp_path):
    stats = HealthMonitor("pi-1", budget_mib=256, thermal_dir=tmp_path).snapshot(counters())
    payload = stats.to_json()
    assert parse_stats(payload) == stats
    assert payload.count(b'"sent_at":"') == 1
    assert b'Z"' in payload
