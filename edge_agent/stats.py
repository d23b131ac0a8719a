"""The stats message an agent publishes every ``mqtt.stats_interval_s`` on ``{prefix}/{device_id}/stats``.

Like ``payload.py``, this module depends on pydantic only, so the aggregator and
monitoring tools can import ``AgentStats`` to parse the messages. Rates and means
cover the interval since the previous stats message; totals count since the agent
started, except ``outbox_dropped_total``, which counts since the outbox file was
created.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

STATS_SCHEMA_VERSION = 1


class AgentStats(BaseModel):
    """Health of one agent over the last stats interval."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = STATS_SCHEMA_VERSION
    device_id: str
    sent_at: AwareDatetime = Field(description="UTC time the message was made.")
    uptime_s: float = Field(ge=0, description="Seconds since the agent started.")
    interval_s: float = Field(ge=0, description="Seconds covered by the rates and means below.")
    counting: Literal["active", "paused"] = Field(description="paused after a pause command, until resume.")
    source_state: Literal["running", "reconnecting", "ended"] = Field(
        description="running: frames arrive; reconnecting: the source failed and is reopened with back-off."
    )
    frames_per_s: float = Field(ge=0, description="Frames analysed per second of wall-clock time.")
    inference_ms: float | None = Field(
        ge=0, description="Mean detection plus classification time per analysed frame; null without frames."
    )
    faces_per_frame: float | None = Field(ge=0, description="Mean face detections per analysed frame.")
    frames_total: int = Field(ge=0, description="Frames analysed since start.")
    skipped_frames_total: int = Field(
        ge=0, description="Live frames replaced by a newer one before the pipeline took them, since start."
    )
    invalid_frames_total: int = Field(ge=0, description="Frames dropped as empty or too small, since start.")
    rss_mib: float = Field(ge=0, description="Resident set size of the agent process.")
    peak_rss_mib: float = Field(ge=0, description="Highest resident set size since start.")
    budget_mib: int = Field(ge=0, description="Configured RAM budget.")
    cpu_temperature_c: float | None = Field(description="SoC temperature; null where /sys/class/thermal has none.")
    outbox_depth: int = Field(ge=0, description="Windows waiting for a PUBACK.")
    outbox_dropped_total: int = Field(ge=0, description="Windows dropped by the outbox cap policy.")
    windows_total: int = Field(ge=0, description="Windows closed since start.")

    @field_validator("sent_at")
    @classmethod
    def _to_utc(cls, moment: datetime) -> datetime:
        return moment.astimezone(UTC)

    def to_json(self) -> bytes:
        data = self.model_dump(mode="json")
        data["sent_at"] = self.sent_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return json.dumps(data, separators=(",", ":")).encode()


def parse_stats(payload: bytes) -> AgentStats:
    """Parse one stats message; raises pydantic's ``ValidationError`` or ``ValueError`` on bad input."""
    return AgentStats.model_validate_json(payload)
