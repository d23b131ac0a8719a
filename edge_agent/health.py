"""Counters of the running agent and the ``AgentStats`` snapshots made from them.

The frame loop records each analysed frame; the delivery thread takes a snapshot every
stats interval, which also logs one INFO line and warns when RSS is above the budget.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from edge_agent.budget import read_peak_rss_mib, read_rss_mib
from edge_agent.stats import AgentStats

log = logging.getLogger(__name__)

THERMAL_DIR = Path("/sys/class/thermal")
# Zone types that measure the SoC or CPU package: Raspberry Pi, then common x86 and ARM names.
CPU_ZONE_TYPES = ("cpu-thermal", "cpu_thermal", "x86_pkg_temp", "soc_thermal", "coretemp")


def read_cpu_temperature_c(thermal_dir: Path = THERMAL_DIR) -> float | None:
    """Return the CPU temperature in degrees Celsius, or None when no thermal zone is readable."""
    zones = sorted(thermal_dir.glob("thermal_zone*"))
    readings: dict[str, float] = {}
    for zone in zones:
        try:
            zone_type = (zone / "type").read_text().strip()
            readings.setdefault(zone_type, int((zone / "temp").read_text().strip()) / 1000)
        except (OSError, ValueError):
            continue
    for zone_type in CPU_ZONE_TYPES:
        if zone_type in readings:
            return readings[zone_type]
    return next(iter(readings.values()), None)


@dataclass(frozen=True, slots=True)
class AgentCounters:
    """Totals the agent reads from its source, windows and outbox when it makes a snapshot."""

    counting: str
    source_state: str
    skipped_frames_total: int
    invalid_frames_total: int
    outbox_depth: int
    outbox_dropped_total: int
    windows_total: int


class HealthMonitor:
    """Per-interval frame timings and totals; thread-safe between the frame loop and the delivery thread."""

    def __init__(self, device_id: str, budget_mib: int, thermal_dir: Path = THERMAL_DIR) -> None:
        self.device_id = device_id
        self.budget_mib = budget_mib
        self._thermal_dir = thermal_dir
        self._lock = threading.Lock()
        self._started_at = time.monotonic()
        self._interval_start = self._started_at
        self._interval_frames = 0
        self._interval_inference_ms = 0.0
        self._interval_faces = 0
        self.frames_total = 0
        self._over_budget_logged_at = float("-inf")

    def record_frame(self, inference_ms: float, faces: int) -> None:
        with self._lock:
            self._interval_frames += 1
            self._interval_inference_ms += inference_ms
            self._interval_faces += faces
            self.frames_total += 1

    def snapshot(self, counters: AgentCounters) -> AgentStats:
        """Return the stats of the interval since the last snapshot and start a new interval."""
        now = time.monotonic()
        with self._lock:
            interval_s = now - self._interval_start
            frames = self._interval_frames
            inference_ms = self._interval_inference_ms / frames if frames else None
            faces_per_frame = self._interval_faces / frames if frames else None
            self._interval_start = now
            self._interval_frames = 0
            self._interval_inference_ms = 0.0
            self._interval_faces = 0
            frames_total = self.frames_total
        rss_mib = read_rss_mib()
        stats = AgentStats(
            device_id=self.device_id,
            sent_at=datetime.now(UTC),
            uptime_s=round(now - self._started_at, 1),
            interval_s=round(interval_s, 1),
            counting=counters.counting,
            source_state=counters.source_state,
            frames_per_s=round(frames / interval_s, 3) if interval_s > 0 else 0.0,
            inference_ms=round(inference_ms, 2) if inference_ms is not None else None,
            faces_per_frame=round(faces_per_frame, 2) if faces_per_frame is not None else None,
            frames_total=frames_total,
            skipped_frames_total=counters.skipped_frames_total,
            invalid_frames_total=counters.invalid_frames_total,
            rss_mib=round(rss_mib, 1),
            peak_rss_mib=round(read_peak_rss_mib(), 1),
            budget_mib=self.budget_mib,
            cpu_temperature_c=read_cpu_temperature_c(self._thermal_dir),
            outbox_depth=counters.outbox_depth,
            outbox_dropped_total=counters.outbox_dropped_total,
            windows_total=counters.windows_total,
        )
        self._log(stats, now)
        return stats

    def _log(self, stats: AgentStats, now: float) -> None:
        log.info(
            "Stats: %.2f frames/s, %s ms/frame, %s faces/frame, RSS %.1f of %d MiB, outbox %d, "
            "skipped %d, dropped frames %d, source %s, counting %s",
            stats.frames_per_s,
            "-" if stats.inference_ms is None else f"{stats.inference_ms:.1f}",
            "-" if stats.faces_per_frame is None else f"{stats.faces_per_frame:.1f}",
            stats.rss_mib,
            stats.budget_mib,
            stats.outbox_depth,
            stats.skipped_frames_total,
            stats.invalid_frames_total,
            stats.source_state,
            stats.counting,
        )
        # At most one warning per 10 minutes, so a slow leak cannot flood the journal.
        if stats.rss_mib > stats.budget_mib and now - self._over_budget_logged_at > 600:
            self._over_budget_logged_at = now
            log.warning(
                "RSS %.1f MiB is above budget_mib %d; systemd throttles the agent at MemoryHigh and kills it "
                "at MemoryMax",
                stats.rss_mib,
                stats.budget_mib,
            )
