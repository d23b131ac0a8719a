"""Command line of the edge agent: ``edge-agent run``, ``check-config`` and ``schema``.

Exit codes: 0 success, 1 runtime failure (model, source, broker), 2 invalid
configuration or usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from datetime import datetime
from pathlib import Path

from edge_agent import __version__
from edge_agent.errors import AgentError, ConfigError

log = logging.getLogger("edge_agent")

EXIT_RUNTIME = 1
EXIT_CONFIG = 2


def _parse_start(text: str) -> str:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid start time {text!r}: use ISO 8601 with a UTC offset, for example 2026-03-02T08:15:00+01:00"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"start time {text!r} has no UTC offset: add one, for example {text}+00:00"
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
    run.add_argument("--mqtt-host", help="override [mqtt] host")
    run.add_argument("--mqtt-port", type=int, help="override [mqtt] port")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.add_argument(
        "--summary-json", type=Path, help="write the run's totals (frames, faces, windows, label counts) to this file"
    )

    check = commands.add_parser("check-config", help="validate a config file and print every error")
    check.add_argument("config", type=Path)

    commands.add_parser("schema", help="print the JSON Schema of the window payload")
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    source: dict = {}
    if args.source is not None:
        source["uri"] = args.source
    if args.source_kind is not None:
        source["kind"] = args.source_kind
    if args.start is not None:
        source["start"] = args.start
    mqtt: dict = {}
    if args.mqtt_host is not None:
        mqtt["host"] = args.mqtt_host
    if args.mqtt_port is not None:
        mqtt["port"] = args.mqtt_port
    return {key: value for key, value in (("source", source), ("mqtt", mqtt)) if value}


def _run(args: argparse.Namespace) -> int:
    from edge_agent.agent import Agent
    from edge_agent.config import load_config

    overrides = _overrides(args)
    uri = overrides.get("source", {}).get("uri")
    if uri is not None and not uri.isdigit() and "://" not in uri:
        # A path given on the command line is relative to the working directory, not to the config.
        overrides["source"]["uri"] = str(Path(uri).resolve())
    config = load_config(args.config, overrides)
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
                    "windows_suppressed": summary.windows_suppressed,
                    "label_counts": dict(summary.label_counts),
                },
                indent=2,
            )
        )
    if summary.windows_acknowledged < summary.windows_published:
        return EXIT_RUNTIME
    return 0


def _check_config(path: Path) -> int:
    from edge_agent.config import load_config

    config = load_config(path)
    print(f"{path}: valid (device {config.device_id}, room {config.room!r}, source {config.source.kind})")
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
