"""Exceptions of the trainer. The ``trainer`` command prints their message and exits with 1."""


class TrainerError(Exception):
    """Base of all errors the trainer reports to its user."""


class WeightsError(TrainerError):
    """A weights file is missing, unreadable or does not fit the architecture."""


class CalibrationError(TrainerError):
    """The media yielded too few face crops to calibrate or to measure the export."""


class ExportError(TrainerError):
    """Conversion to TFLite failed or produced a file that breaks the int8-only contract."""


class DataError(TrainerError):
    """A dataset is missing, of an unknown shape, or has more malformed rows than allowed."""


class AccuracyDropError(ExportError):
    """The int8 file loses more test accuracy against the float model than the export allows."""


class ConfigError(TrainerError, ValueError):
    """A configuration value or file is invalid. Also a ``ValueError``, so Lightning's CLI reports it.

    ``key`` names the invalid setting, when there is one.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key
