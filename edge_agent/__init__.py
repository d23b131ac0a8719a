"""Edge agent: camera frames in, anonymous per-window emotion counts out over MQTT."""

__version__ = "0.1.0"
