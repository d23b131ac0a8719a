"""Exceptions of the aggregator.

Every error the aggregator reports to an operator derives from ``AggregatorError``.
The CLI prints its message as one line and exits with ``exit_code``, so each message
names the option, value or address at fault and what to do about it.

- ``ConfigError`` (exit 2): an option or setting is invalid.
- ``LectureNotFoundError`` (exit 2): no lecture has the requested id.
- ``StoreError`` (exit 1): the database cannot be opened, migrated or written.
- ``BrokerError`` (exit 1): the MQTT broker is unreachable or rejects the client.
"""


class AggregatorError(Exception):
    """Base of all errors the aggregator reports to an operator."""

    #: Process exit status of the CLI for this error: 2 for invalid input, 1 for runtime failures.
    exit_code = 1


class ConfigError(AggregatorError):
    """An option or setting is invalid, for example a malformed database URL or time."""

    exit_code = 2


class LectureNotFoundError(AggregatorError):
    """No lecture has the requested id."""

    exit_code = 2


class StoreError(AggregatorError):
    """The database cannot be opened, migrated, read or written.

    ``retryable`` is true when the same operation may succeed later without a change to
    the data, for example after a lost connection or a locked SQLite file.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class BrokerError(AggregatorError):
    """The MQTT broker is unreachable, refuses the connection or rejects the subscription."""
