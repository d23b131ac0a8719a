"""Command line of the edge agent: ``edge-agent run``, ``check-config``, ``systemd-unit`` and ``schema``.

Exit codes: 0 success, 1 runtime failure (model, source, broker credentials, RAM
budget, or a replay that ended with windows left in the outbox), 2 invalid
configuration or usage.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import signal
import sys
from datetime import datetime
from pathlib import Path

from edge_agent import __version__
from edge_agent.errors import AgentError, ConfigError

log = logging.getLogger("edge_agent")

EXIT_RUNTIME = 1
EXIT_CONFIG = 2
DEFAULT_UNIT_CONFIG_PATH = "/etc/edge-agent/agent.toml"
DEFAULT_UNIT_EXECUTABLE = "/opt/classroom-emotion-stats/.venv/bin/edge-agent"
UNIT_TEMPLATE = Path(__file__).resolve().parent.parent / "systemd" / "edge-agent.service"


def _parse_start(text: str) -> str:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid start time {text!r}: use ISO 8601 with a UTC offset, for example 2026-03-02T08:15:00+01:00"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"start time {text!r} has no UTC offset: add one, for example "
            f"{moment.isoformat(timespec='seconds')}+00:00"
        )
    from edge_agent.config import MAX_START_YEAR, MIN_START_YEAR

    if not MIN_START_YEAR <= moment.year <= MAX_START_YEAR:
        raise argparse.ArgumentTypeError(
            f"start time {text!r} is out of range: use a year from {MIN_START_YEAR} to {MAX_START_YEAR}"
        )
    return moment.isoformat()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent", description="Count emotions of faces in camera frames and publish them per time window."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline until the source ends or SIGTERM")
    run.add_argument("--config", type=Path, required=True, help="TOML config file")
    run.add_argument("--source", help="override [source] uri: video file, image folder, camera index or URL")
    run.add_argument(
        "--source-kind", choices=["video", "images", "camera", "picamera2"], help="override [source] kind"
    )
    run.add_argument(
        "--start", type=_parse_start, help="wall-clock time of the first frame of a recording (ISO 8601 with offset)"
    )
    run.add_argument("--outbox", type=Path, help="override [outbox] path: the SQLite file of pending windows")
    run.add_argument("--mqtt-host", help="override [mqtt] host")
    run.add_argument("--mqtt-port", type=int, help="override [mqtt] port")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.add_argument(
        "--summary-json", type=Path, help="write the run's totals (frames, faces, windows, label counts) to this file"
    )

    check = commands.add_parser("check-config", help="validate a config file and print every error")
    check.add_argument("config", type=Path)

    commands.add_parser("schema", help="print the JSON Schema of the window payload")

    unit = commands.add_parser(
        "systemd-unit", help="print the systemd unit with MemoryHigh and MemoryMax from the config's budget_mib"
    )
    unit.add_argument("config", type=Path)
    unit.add_argument(
        "--config-path",
        default=DEFAULT_UNIT_CONFIG_PATH,
        help=f"config path written into ExecStart (default {DEFAULT_UNIT_CONFIG_PATH})",
    )
    unit.add_argument(
        "--exec",
        dest="executable",
        help="edge-agent program written into ExecStart (default: the one beside this Python)",
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    source: dict = {}
    if args.source is not None:
        source["uri"] = args.source
    if args.source_kind is not None:
        source["kind"] = args.source_kind
        # The config's loss policy was chosen for its own kind; the new kind gets its default.
        source["on_loss"] = None
    if args.start is not None:
        source["start"] = args.start
    mqtt: dict = {}
    if args.mqtt_host is not None:
        mqtt["host"] = args.mqtt_host
    if args.mqtt_port is not None:
        mqtt["port"] = args.mqtt_port
    outbox: dict = {}
    if args.outbox is not None:
        outbox["path"] = str(args.outbox.resolve())
    sections = (("source", source), ("mqtt", mqtt), ("outbox", outbox))
    return {key: value for key, value in sections if value}


def _run(args: argparse.Namespace) -> int:
    from edge_agent.agent import Agent
    from edge_agent.config import load_config

    if args.summary_json is not None:
        # Checked before the run, whose totals would otherwise be lost at its end.
        if args.summary_json.is_dir():
            raise ConfigError(f"--summary-json {args.summary_json} is a folder: give a file path inside it")
        if not args.summary_json.parent.is_dir():
            raise ConfigError(
                f"--summary-json {args.summary_json}: folder {args.summary_json.parent} does not exist; create it first"
            )
    overrides = _overrides(args)
    uri = overrides.get("source", {}).get("uri")
    if uri is not None and not uri.isdigit() and "://" not in uri:
        # A path given on the command line is relative to the working directory, not to the config.
        overrides["source"]["uri"] = str(Path(uri).resolve())
    config = load_config(args.config, overrides)
    if args.source is not None and config.source.kind == "picamera2":
        raise ConfigError(
            f"--source {args.source} is ignored by the Pi camera ([source] kind = 'picamera2'): add --source-kind "
            "video for a file, images for a folder, or camera for a device index or stream URL"
        )
    agent = Agent(config)

    def request_stop(signum: int, frame: object) -> None:
        log.info("Received %s, closing the open window", signal.Signals(signum).name)
        agent.stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    summary = agent.run()

    if args.summary_json:
        args.summary_json.write_text(
            json.dumps(
                {
                    "frames_sampled": summary.frames_sampled,
                    "faces_seen": summary.faces_seen,
                    "windows_published": summary.windows_published,
                    "windows_acknowledged": summary.windows_acknowledged,
                    "windows_pending": summary.windows_pending,
                    "windows_suppressed": summary.windows_suppressed,
                    "windows_dropped": summary.windows_dropped,
                    "skipped_frames": summary.skipped_frames,
                    "invalid_frames": summary.invalid_frames,
                    "label_counts": dict(summary.label_counts),
                },
                indent=2,
            )
        )
    if summary.source_error is not None:
        print(f"edge-agent: {summary.source_error}", file=sys.stderr)
        return EXIT_RUNTIME
    # After SIGTERM, pending windows are safe in the outbox. After a replay that ended on
    # its own, they mean the broker did not take everything, which the caller must learn.
    if summary.windows_pending and not summary.stopped_by_request:
        if not summary.broker_reached:
            print(
                f"edge-agent: the MQTT broker at {config.mqtt.host}:{config.mqtt.port} was not reachable during "
                "the run. Check that it runs and that [mqtt] host and port in the config are right.",
                file=sys.stderr,
            )
        print(
            f"edge-agent: {summary.windows_pending} window(s) were not acknowledged by the broker and stay in "
            f"the outbox {config.outbox.path}; the next run sends them",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    recording = config.source.kind in ("video", "images")
    if recording and summary.frames_sampled == 0 and not summary.stopped_by_request:
        print(
            f"edge-agent: {config.source.uri} gave no usable frame ({summary.invalid_frames} dropped as empty, "
            "too small or malformed), so nothing was counted: check the recording",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    return 0


def _check_config(path: Path) -> int:
    from edge_agent.budget import BudgetPlan, memory_max_mib, static_parts
    from edge_agent.config import load_config
    from edge_agent.publisher import check_tls_files, read_password

    config = load_config(path)
    problems: list[str] = []
    models = [("classifier.model", config.classifier.model)]
    if config.detector.model is not None:
        models.append(("detector.model", config.detector.model))
    for key, model in models:
        if not Path(model).is_file():
            problems.append(f"  {key} = '{model}': file not found; fix the path")
    if Path(config.classifier.model).is_file():
        from edge_agent.errors import ModelError
        from edge_agent.model_card import load_model_card

        try:
            load_model_card(config.classifier.model)
        except ModelError as error:
            problems.append(f"  classifier.model: {error}")
    uri = Path(config.source.uri)
    if config.source.kind in ("video", "images") and not uri.exists():
        problems.append(f"  source.uri = '{config.source.uri}': not found; fix the path")
    elif config.source.kind == "video" and uri.is_dir():
        problems.append(f"  source.uri = '{config.source.uri}' is a folder: for photos set source.kind = \"images\"")
    elif config.source.kind == "images" and uri.is_file():
        problems.append(f"  source.uri = '{config.source.uri}' is a file: for a video set source.kind = \"video\"")
    elif config.source.kind == "video":
        from edge_agent.capture import VideoFileSource
        from edge_agent.errors import SourceError

        try:
            VideoFileSource(uri, config.source.sample_fps, config.source.start).close()
        except SourceError as error:
            problems.append(f"  source.uri: {error}")
    # Only a warning: the config may be checked on another machine than the Pi that runs it.
    camera_warning = None
    if config.source.kind == "picamera2" and importlib.util.find_spec("picamera2") is None:
        camera_warning = (
            "  warning: source.kind = 'picamera2', but picamera2 is not installed here, so run would exit. On "
            "Raspberry Pi OS run 'sudo apt install python3-picamera2' and create the virtual environment with "
            "--system-site-packages"
        )
    for check in (check_tls_files, read_password):
        try:
            check(config.mqtt)
        except ConfigError as error:
            problems.append(f"  {error}")
    # Only a warning: outside systemd, $STATE_DIRECTORY is unset and a relative outbox path
    # resolves against the config's directory, which the service itself never writes to.
    outbox_dir = _nearest_existing_dir(Path(config.outbox.path).parent)
    outbox_warning = None
    if not os.access(outbox_dir, os.W_OK):
        outbox_warning = (
            f"  warning: outbox.path = '{config.outbox.path}': {outbox_dir} is not writable by this user; "
            "under the systemd unit a relative path goes to $STATE_DIRECTORY instead"
        )
    plan = BudgetPlan(tuple(static_parts(config)), config.budget_mib)
    if plan.total_mib > config.budget_mib:
        problems.append(f"  budget_mib = {config.budget_mib}: the frame buffers, outbox and MQTT parts alone need "
                        f"{plan.total_mib:.1f} MiB; {plan.largest.remedy}, or raise budget_mib")
    if problems:
        print(f"{path}: {len(problems)} problem(s)", file=sys.stderr)
        print("\n".join(problems), file=sys.stderr)
        return EXIT_CONFIG
    print(f"{path}: valid (device {config.device_id}, room {config.room!r}, source {config.source.kind})")
    print(f"  budget_mib {config.budget_mib}: systemd MemoryHigh={config.budget_mib}M "
          f"MemoryMax={memory_max_mib(config.budget_mib)}M")
    print(f"  parts known before the models load: {plan.describe()}")
    print(f"  outbox {config.outbox.path}, at most {config.outbox.max_windows} windows, {config.outbox.when_full}")
    for warning in (outbox_warning, camera_warning):
        if warning:
            print(warning)
    return 0


def _nearest_existing_dir(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def systemd_quote(argument: str) -> str:
    """Quote one ExecStart argument: systemd splits on whitespace and expands % specifiers and $ variables.

    Raises:
        ConfigError: the argument contains a control character, which a unit file cannot carry.
    """
    if any(ord(character) < 32 or ord(character) == 127 for character in argument):
        raise ConfigError(f"{argument!r} contains a control character (tab, newline, ...): rename the path")
    escaped = argument.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    needs_quotes = escaped != argument or not argument or any(character.isspace() for character in argument)
    return f'"{escaped}"' if needs_quotes else argument


def render_unit(budget_mib: int, config_path: str, executable: str = DEFAULT_UNIT_EXECUTABLE) -> str:
    """Return the systemd unit with MemoryHigh and MemoryMax set from ``budget_mib``.

    Raises:
        ConfigError: ``config_path`` or ``executable`` is not an absolute path.
    """
    from edge_agent.budget import memory_max_mib

    for option, value in (("--config-path", config_path), ("--exec", executable)):
        if not value.startswith("/"):
            raise ConfigError(
                f"{option} {value!r} is relative: systemd needs an absolute path, such as {Path(value).absolute()}"
            )
    text = UNIT_TEMPLATE.read_text(encoding="utf-8")
    lines = []
    for line in text.splitlines():
        if line.startswith("MemoryHigh="):
            line = f"MemoryHigh={budget_mib}M"
        elif line.startswith("MemoryMax="):
            line = f"MemoryMax={memory_max_mib(budget_mib)}M"
        elif line.startswith("ExecStart="):
            line = line.replace(DEFAULT_UNIT_CONFIG_PATH, systemd_quote(config_path))
            line = line.replace(DEFAULT_UNIT_EXECUTABLE, systemd_quote(executable))
        lines.append(line)
    return "\n".join(lines) + "\n"


def _print_unit(path: Path, config_path: str, executable: str | None) -> int:
    from edge_agent.config import load_config

    config = load_config(path)
    # sys.executable is the venv's python, possibly a link to the system one: not resolved.
    program = executable or str(Path(sys.executable).absolute().parent / "edge-agent")
    print(render_unit(config.budget_mib, config_path, program), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "check-config":
            return _check_config(args.config)
        if args.command == "systemd-unit":
            return _print_unit(args.config, args.config_path, args.executable)
        if args.command == "schema":
            from edge_agent.payload import json_schema

            print(json.dumps(json_schema(), indent=2))
            return 0
    except ConfigError as error:
        print(f"edge-agent: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except AgentError as error:
        print(f"edge-agent: {error}", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
