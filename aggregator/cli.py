"""Command line of the aggregator: ``aggregator run | lecture add | lecture list | report``.

Exit status: 0 on success, 2 for invalid options or values (including an unknown
lecture id), 1 for runtime failures such as an unreachable broker or database.
Every error is one line on stderr that names the value at fault and the fix.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from aggregator import __version__
from aggregator.errors import AggregatorError, ConfigError
from aggregator.ingest import Ingest, IngestSettings, default_client_id
from aggregator.report import DEFAULT_STEP_S, compute_report
from aggregator.store import DEFAULT_DB_URL, Lecture, Store
from aggregator.text_report import render_text
from aggregator.times import Zone, format_offset, parse_time, resolve_zone
from edge_agent import sd_notify
from edge_agent.payload import DEFAULT_TOPIC_PREFIX

log = logging.getLogger("aggregator")

DB_ENVIRONMENT_VARIABLE = "AGGREGATOR_DB"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one aggregator command and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.log_level or ("INFO" if args.command == "run" else "WARNING"))
    try:
        return args.handler(args)
    except AggregatorError as error:
        print(f"aggregator: error: {error}", file=sys.stderr)
        return error.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aggregator",
        description="Store the emotion windows that edge agents publish over MQTT, and report per lecture.",
        epilog="Exit status: 0 success, 1 runtime failure, 2 invalid option or value.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level on stderr (default: INFO for run, WARNING otherwise)",
    )
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--db",
        default=os.environ.get(DB_ENVIRONMENT_VARIABLE) or DEFAULT_DB_URL,
        help=f"database URL: sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/NAME "
        f"(default: ${DB_ENVIRONMENT_VARIABLE}, else {DEFAULT_DB_URL})",
    )
    zone = argparse.ArgumentParser(add_help=False)
    zone.add_argument(
        "--tz", help="IANA time zone of local times, such as Europe/Berlin (default: the system zone)"
    )

    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run_parser(commands, database)
    _add_lecture_parsers(commands, database, zone)

    report = commands.add_parser(
        "report", parents=[database, zone], help="print the text report of a lecture"
    )
    report.add_argument(
        "lecture_id", type=int, metavar="LECTURE_ID", help="id from 'aggregator lecture list'"
    )
    report.add_argument(
        "--step-s",
        type=int,
        default=DEFAULT_STEP_S,
        help=f"length of one timeline row in seconds (default: {DEFAULT_STEP_S})",
    )
    report.set_defaults(handler=_report)
    return parser


def _add_run_parser(commands: argparse._SubParsersAction, database: argparse.ArgumentParser) -> None:
    defaults = IngestSettings()
    run = commands.add_parser("run", parents=[database], help="receive windows over MQTT and store them")
    run.add_argument("--host", default=defaults.host, help=f"MQTT broker host (default: {defaults.host})")
    run.add_argument(
        "--port", type=int, default=defaults.port, help=f"MQTT broker port (default: {defaults.port})"
    )
    run.add_argument(
        "--topic-prefix",
        default=DEFAULT_TOPIC_PREFIX,
        help="topic prefix of the agents; windows arrive on PREFIX/DEVICE/window "
        f"(default: {DEFAULT_TOPIC_PREFIX})",
    )
    run.add_argument(
        "--client-id",
        default=None,
        help="MQTT client id; it names the broker session that queues windows while the aggregator "
        "is down, so keep it fixed and unique per aggregator (default: aggregator-HOSTNAME)",
    )
    run.add_argument(
        "--share-group",
        default=None,
        help="MQTT 5 shared subscription group: aggregators with the same group split the windows",
    )
    run.add_argument(
        "--session-expiry-s",
        type=int,
        default=defaults.session_expiry_s,
        help="seconds the broker keeps the session and its queued windows after a disconnect "
        f"(default: {defaults.session_expiry_s})",
    )
    run.set_defaults(handler=_run)


def _add_lecture_parsers(
    commands: argparse._SubParsersAction, database: argparse.ArgumentParser, zone: argparse.ArgumentParser
) -> None:
    lecture = commands.add_parser("lecture", help="add or list lectures")
    lecture_commands = lecture.add_subparsers(dest="lecture_command", required=True, metavar="COMMAND")

    add = lecture_commands.add_parser(
        "add", parents=[database, zone], help="add a lecture and print its id on stdout"
    )
    add.add_argument("--room", required=True, help="room, as in the agents' config")
    add.add_argument("--title", required=True, help="title shown in reports")
    add.add_argument(
        "--start",
        required=True,
        help="ISO 8601 start, such as 2026-03-02T08:15; without an offset it is in --tz",
    )
    add.add_argument(
        "--end", required=True, help="ISO 8601 end, after the start; without an offset it is in --tz"
    )
    add.set_defaults(handler=_lecture_add)

    listing = lecture_commands.add_parser(
        "list", parents=[database, zone], help="list lectures by start time"
    )
    listing.add_argument("--room", default=None, help="list only the lectures of this room")
    listing.set_defaults(handler=_lecture_list)


def _run(args: argparse.Namespace) -> int:
    settings = IngestSettings(
        host=args.host,
        port=args.port,
        topic_prefix=args.topic_prefix,
        client_id=args.client_id or default_client_id(),
        share_group=args.share_group,
        session_expiry_s=args.session_expiry_s,
    )
    stop_requested = threading.Event()

    def request_stop(signal_number: int, _frame: FrameType | None) -> None:
        log.info("Received %s; storing what was received and stopping", signal.Signals(signal_number).name)
        stop_requested.set()

    previous_handlers = {
        number: signal.signal(number, request_stop) for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        with Store.open(args.db) as store:
            ingest = Ingest(store, settings)
            ingest.start()
            sd_notify.notify("READY=1")
            while not stop_requested.wait(1.0) and ingest.failure is None:
                pass
            ingest.stop()
    finally:
        for number, handler in previous_handlers.items():
            signal.signal(number, handler)

    if ingest.failure is not None:
        log.error("Aggregator stopped after a failure: %s", ingest.failure)
        return 1
    return 0


def _lecture_add(args: argparse.Namespace) -> int:
    zone = resolve_zone(args.tz)
    start = parse_time(args.start, zone, "--start")
    end = parse_time(args.end, zone, "--end")
    if end <= start:
        raise ConfigError(f"--end {args.end!r} is not after --start {args.start!r}: correct or swap them")
    with Store.open(args.db) as store:
        lecture = store.add_lecture(room=args.room, title=args.title, start=start, end=end)
    print(lecture.id)
    print(f"Added lecture {lecture.id}: {_describe(lecture, zone)}", file=sys.stderr)
    return 0


def _lecture_list(args: argparse.Namespace) -> int:
    zone = resolve_zone(args.tz)
    with Store.open(args.db) as store:
        lectures = store.list_lectures(room=args.room)
    if not lectures:
        print("No lectures yet: add one with 'aggregator lecture add'", file=sys.stderr)
        return 0
    print(f"{'id':>5}  {'start':<16}  {'end':<16}  {'room':<12}  title   (times in {zone.name})")
    for lecture in lectures:
        start = lecture.start.astimezone(zone.tzinfo)
        end = lecture.end.astimezone(zone.tzinfo)
        times = f"{start:%Y-%m-%d %H:%M}  {end:%Y-%m-%d %H:%M}"
        print(f"{lecture.id:>5}  {times}  {lecture.room:<12}  {lecture.title}")
    return 0


def _report(args: argparse.Namespace) -> int:
    zone = resolve_zone(args.tz)
    with Store.open(args.db) as store:
        report = compute_report(store, args.lecture_id, zone, step_s=args.step_s)
    sys.stdout.write(render_text(report))
    return 0


def _describe(lecture: Lecture, zone: Zone) -> str:
    start = lecture.start.astimezone(zone.tzinfo)
    end = lecture.end.astimezone(zone.tzinfo)
    return (
        f"{lecture.title!r} in room {lecture.room}, {start:%Y-%m-%d %H:%M} {format_offset(start)} "
        f"to {end:%Y-%m-%d %H:%M} {format_offset(end)} ({zone.name})"
    )


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    # Alembic logs its setup at INFO on every start, and the store already logs the upgrades that ran.
    logging.getLogger("alembic").setLevel(max(logging.getLogger().level, logging.WARNING))
