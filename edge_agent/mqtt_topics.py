"""MQTT topics of one device, all under ``{prefix}/{device_id}/``.

| topic     | direction | payload                                  | QoS | retained |
|-----------|-----------|------------------------------------------|-----|----------|
| window    | agent ->  | ``WindowReport`` JSON (payload.py)       | 1   | no       |
| status    | agent ->  | online, stopped, or offline (last will)  | 1   | yes      |
| stats     | agent ->  | ``AgentStats`` JSON (stats.py)           | 0   | yes      |
| counting  | agent ->  | active or paused                         | 1   | yes      |
| command   | -> agent  | pause or resume                          | 1   | either   |
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.payload import window_topic

STATUS_ONLINE = "online"
STATUS_STOPPED = "stopped"
STATUS_OFFLINE = "offline"
COUNTING_ACTIVE = "active"
COUNTING_PAUSED = "paused"
COMMAND_PAUSE = "pause"
COMMAND_RESUME = "resume"


@dataclass(frozen=True, slots=True)
class DeviceTopics:
    """Topic names of one device."""

    window: str
    status: str
    stats: str
    counting: str
    command: str

    @classmethod
    def for_device(cls, prefix: str, device_id: str) -> DeviceTopics:
        base = f"{prefix}/{device_id}"
        return cls(
            window=window_topic(prefix, device_id),
            status=f"{base}/status",
            stats=f"{base}/stats",
            counting=f"{base}/counting",
            command=f"{base}/command",
        )


def stats_subscription(prefix: str) -> str:
    """Return the topic filter that matches the stats of every device."""
    return f"{prefix}/+/stats"


def status_subscription(prefix: str) -> str:
    """Return the topic filter that matches the status of every device."""
    return f"{prefix}/+/status"
