"""Exceptions of the edge agent.

Every error the agent reports to an operator derives from ``AgentError``. The CLI
prints its message and exits non-zero, so each message names the file, key or value
at fault and what to do about it.

- ``ConfigError``: the TOML config is missing, unreadable or invalid.
- ``ModelError``: a model file or its card is missing, corrupt, or they disagree.
- ``SourceError``: a video, image folder or camera cannot be opened or read.
- ``BrokerError``: the MQTT broker cannot be reached or refuses the connection.
- ``OutboxError``: the outbox file cannot be opened or written.
- ``BudgetError``: the configured parts need more RAM than ``budget_mib``.
"""


class AgentError(Exception):
    """Base of all errors the edge agent reports to an operator."""


class ConfigError(AgentError):
    """The configuration is missing, unreadable or invalid."""


class ModelError(AgentError):
    """A model file or its model card is missing, corrupt or inconsistent."""


class SourceError(AgentError):
    """A frame source cannot be opened or read."""


class SourceSetupError(SourceError):
    """A source that no retry can open, such as a camera library that is not installed."""


class BrokerError(AgentError):
    """The MQTT broker is unreachable or refused the connection."""


class OutboxError(AgentError):
    """The outbox file cannot be opened or written."""


class BudgetError(AgentError):
    """The agent's parts add up to more RAM than ``budget_mib`` allows."""
