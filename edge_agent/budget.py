"""The agent's RAM budget: what its parts need, checked against ``budget_mib`` at start.

Parts and how each is found:

- runtime: resident set size of the process before the models load (interpreter,
  numpy, OpenCV, LiteRT, paho, SQLite), measured.
- detector and classifier: the peak RSS increase while each model loads and runs once
  on a blank frame of the largest configured size, measured with the kernel's peak RSS
  counter (reset through /proc/self/clear_refs). Where that reset is not allowed, the
  retained increase is used, which misses short-lived working memory.
- frame buffers: ``FRAMES_IN_FLIGHT`` BGR frames of the largest configured size, an
  estimate (the frame being read, the newest frame waiting, the frame being analysed).
- outbox: SQLite's page cache (the rows stay on disk).
- MQTT in flight: ``max_inflight`` windows of the largest valid payload, plus the
  status, counting and stats messages.

The systemd unit sets ``MemoryHigh`` to ``budget_mib`` and ``MemoryMax`` to
``memory_max_mib(budget_mib)``, so the kernel enforces the same number.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from edge_agent.config import AgentConfig
from edge_agent.errors import BudgetError
from edge_agent.outbox import PAGE_CACHE_KIB
from edge_agent.payload import MAX_PAYLOAD_BYTES

log = logging.getLogger(__name__)

MIB = 1024 * 1024
FRAMES_IN_FLIGHT = 3
# Status, counting and stats messages that may wait in paho beside the windows.
CONTROL_MESSAGES_IN_FLIGHT = 4
# MemoryMax sits this far above MemoryHigh, so the kernel first reclaims and throttles
# (MemoryHigh) and kills only on a clear overrun.
MEMORY_MAX_FACTOR = 1.25

_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True, slots=True)
class BudgetPart:
    """One part of the agent's RAM use."""

    name: str
    mib: float
    measured: bool
    # What lowers this part, for the error message when the budget is exceeded.
    remedy: str


@dataclass(frozen=True, slots=True)
class BudgetPlan:
    """Parts of the agent's RAM use and the budget they must fit."""

    parts: tuple[BudgetPart, ...]
    budget_mib: int

    @property
    def total_mib(self) -> float:
        return sum(part.mib for part in self.parts)

    @property
    def largest(self) -> BudgetPart:
        return max(self.parts, key=lambda part: part.mib)

    def describe(self) -> str:
        shown = ", ".join(
            f"{part.name} {part.mib:.1f}{'' if part.measured else ' (estimate)'}" for part in self.parts
        )
        return f"{shown}; total {self.total_mib:.1f} MiB of budget_mib {self.budget_mib}"


def memory_max_mib(budget_mib: int) -> int:
    """Return the systemd ``MemoryMax`` for a budget."""
    return math.ceil(budget_mib * MEMORY_MAX_FACTOR)


def frame_buffer_part(config: AgentConfig) -> BudgetPart:
    width_px, height_px = config.source.max_frame_px
    return BudgetPart(
        name="frame buffers",
        mib=FRAMES_IN_FLIGHT * width_px * height_px * 3 / MIB,
        measured=False,
        remedy=f"lower [source] width and height (now {width_px}x{height_px})",
    )


def static_parts(config: AgentConfig) -> list[BudgetPart]:
    """Return the parts known from the config alone: frame buffers, outbox cache and MQTT in flight."""
    inflight_messages = config.mqtt.max_inflight + CONTROL_MESSAGES_IN_FLIGHT
    return [
        frame_buffer_part(config),
        BudgetPart(
            name="outbox page cache",
            mib=PAGE_CACHE_KIB / 1024,
            measured=False,
            remedy="raise budget_mib",
        ),
        BudgetPart(
            name="MQTT in flight",
            mib=inflight_messages * MAX_PAYLOAD_BYTES / MIB,
            measured=False,
            remedy=f"lower [mqtt] max_inflight (now {config.mqtt.max_inflight})",
        ),
    ]


def check_budget(plan: BudgetPlan) -> None:
    """Raise ``BudgetError`` naming the largest part when the parts exceed the budget."""
    if plan.total_mib <= plan.budget_mib:
        return
    largest = plan.largest
    raise BudgetError(
        f"The agent needs about {plan.total_mib:.1f} MiB but budget_mib is {plan.budget_mib}. "
        f"The largest part is {largest.name} ({largest.mib:.1f} MiB): {largest.remedy}, or raise budget_mib. "
        f"Parts: {plan.describe()}."
    )


def read_rss_mib() -> float:
    """Return the resident set size of this process in MiB (0 where /proc is missing)."""
    return _read_status_kib("VmRSS") / 1024


def read_peak_rss_mib() -> float:
    """Return the peak resident set size of this process in MiB since start or the last reset."""
    return _read_status_kib("VmHWM") / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak RSS counter (Linux 4.0 and later); return whether it was reset."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _read_status_kib(field: str) -> int:
    try:
        text = _PROC_STATUS.read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class PartMeter:
    """Measure the RAM that one step of start-up adds: peak RSS increase, or retained increase as fallback."""

    def __init__(self) -> None:
        self.peak_counter = reset_peak_rss()
        self._before_mib = read_rss_mib()

    def mib(self) -> float:
        after_mib = read_peak_rss_mib() if self.peak_counter else read_rss_mib()
        return max(0.0, after_mib - self._before_mib)
