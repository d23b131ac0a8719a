"""Command line of the aggregator.

Commands: ``run``, ``devices``, ``lecture add | list | start | stop | import``,
``report`` (one lecture, or a room or course over a date range) and ``purge``.

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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

from aggregator import __version__
from aggregator.errors import AggregatorError, ConfigError
from aggregator.ingest import Ingest, IngestSettings, default_client_id
from aggregator.devices import DEFAULT_SILENT_AFTER_S, list_devices
from aggregator.range_report import compute_range_report
from aggregator.report import DEFAULT_STEP_S, compute_report
from aggregator.store import DEFAULT_DB_URL, Lecture, LectureSource, Store
from aggregator.text_report import render_range_text, render_text
from aggregator.times import Zone, format_offset, parse_time, resolve_zone
from edge_agent import sd_notify
from edge_agent.payload import DEFAULT_TOPIC_PREFIX

log = logging.getLogger("aggregator")

DB_ENVIRONMENT_VARIABLE = "AGGREGATOR_DB"
PASSWORD_ENVIRONMENT_VARIABLE = "AGGREGATOR_MQTT_PASSWORD"
RETENTION_ENVIRONMENT_VARIABLE = "AGGREGATOR_RETENTION_DAYS"
DEFAULT_RETENTION_DAYS = 365
DEFAULT_AD_HOC_MIN = 90
REPORT_FORMATS = ("text", "csv", "json", "html")
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
        "report",
        parents=[database, zone],
        help="report one lecture, or the lectures of a room or course in a date range",
    )
    report.add_argument(
        "lecture_id", type=int, nargs="?", metavar="LECTURE_ID", help="id from 'aggregator lecture list'"
    )
    report.add_argument("--room", help="report the lectures of this room from --from to --to")
    report.add_argument("--course", help="report the lectures of this course from --from to --to")
    report.add_argument("--from", dest="range_from", help="first day (ISO date or time, in --tz) of a range report")
    report.add_argument("--to", dest="range_to", help="day after the last (ISO date or time, in --tz) of a range report")
    report.add_argument("--format", choices=REPORT_FORMATS, default="text", help="output format (default: text)")
    report.add_argument("--output", type=Path, help="write the report to this file instead of stdout")
    report.add_argument(
        "--step-s",
        type=int,
        default=DEFAULT_STEP_S,
        help=f"length of one timeline row in seconds (default: {DEFAULT_STEP_S})",
    )
    report.set_defaults(handler=_report)

    devices = commands.add_parser("devices", parents=[database, zone], help="list devices and flag silent ones")
    devices.add_argument(
        "--silent-after-s",
        type=float,
        default=DEFAULT_SILENT_AFTER_S,
        help=f"flag a device silent after this many seconds without a message (default: {DEFAULT_SILENT_AFTER_S})",
    )
    devices.set_defaults(handler=_devices)

    purge = commands.add_parser(
        "purge", parents=[database], help="delete windows, lectures and devices older than the retention period"
    )
    purge.add_argument(
        "--retention-days",
        type=int,
        default=int(os.environ.get(RETENTION_ENVIRONMENT_VARIABLE) or DEFAULT_RETENTION_DAYS),
        help=f"days to keep (default: ${RETENTION_ENVIRONMENT_VARIABLE}, else {DEFAULT_RETENTION_DAYS})",
    )
    purge.set_defaults(handler=_purge)
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
    run.add_argument("--username", help="MQTT username (default: connect anonymously)")
    run.add_argument(
        "--password-file",
        type=Path,
        help=f"file whose first line is the MQTT password (default: ${PASSWORD_ENVIRONMENT_VARIABLE})",
    )
    run.add_argument("--tls", action="store_true", help="connect with TLS, verified against the system CAs")
    run.add_argument("--ca-file", type=Path, help="PEM CA certificates that verify the broker; turns TLS on")
    run.add_argument("--cert-file", type=Path, help="PEM client certificate for brokers that require one")
    run.add_argument("--key-file", type=Path, help="PEM private key of --cert-file, if it is a separate file")
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

    start = lecture_commands.add_parser(
        "start", parents=[database, zone], help="start an ad hoc lecture in a room now and print its id"
    )
    start.add_argument("--room", required=True, help="room, as in the agents' config")
    start.add_argument("--title", required=True, help="title shown in reports")
    start.add_argument("--course", help="course, for the course trend report")
    start.add_argument(
        "--planned-min",
        type=int,
        default=DEFAULT_AD_HOC_MIN,
        help=f"end used until 'lecture stop', in minutes after the start (default: {DEFAULT_AD_HOC_MIN})",
    )
    start.set_defaults(handler=_lecture_start)

    stop = lecture_commands.add_parser("stop", parents=[database, zone], help="end the ad hoc lecture of a room now")
    stop.add_argument("--room", required=True, help="room of the running ad hoc lecture")
    stop.set_defaults(handler=_lecture_stop)

    timetable = lecture_commands.add_parser(
        "import", parents=[database, zone], help="import a room's timetable from a .csv or .ics file"
    )
    timetable.add_argument("path", type=Path, metavar="FILE", help="timetable: .csv or .ics")
    timetable.add_argument("--room", help="room of lectures without a room column or LOCATION")
    timetable.add_argument("--from", dest="range_from", help="expand recurring events from this date (in --tz)")
    timetable.add_argument("--to", dest="range_to", help="expand recurring events up to this date (in --tz)")
    timetable.set_defaults(handler=_lecture_import)


def _read_password(args: argparse.Namespace) -> str | None:
    if args.password_file is not None:
        try:
            return args.password_file.read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError) as error:
            raise ConfigError(f"Cannot read the MQTT password from --password-file {str(args.password_file)!r}: {error}") from None
    return os.environ.get(PASSWORD_ENVIRONMENT_VARIABLE) or None


def _run(args: argparse.Namespace) -> int:
    settings = IngestSettings(
        username=args.username,
        password=_read_password(args) if args.username else None,
        tls=args.tls,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
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


def _lecture_start(args: argparse.Namespace) -> int:
    zone = resolve_zone(args.tz)
    if args.planned_min < 1:
        raise ConfigError(f"Invalid --planned-min {args.planned_min}: use at least 1")
    now = datetime.now(UTC).replace(microsecond=0)
    with Store.open(args.db) as store:
        lecture = store.add_lecture(
            args.room, args.title, now, now + timedelta(minutes=args.planned_min),
            course=args.course, source=LectureSource.AD_HOC,
        )
    print(lecture.id)
    print(f"Started lecture {lecture.id}: {_describe(lecture, zone)}", file=sys.stderr)
    return 0


def _lecture_stop(args: argparse.Namespace) -> int:
    zone = resolve_zone(args.tz)
    with Store.open(args.db) as store:
        lecture = store.stop_lecture(args.room, datetime.now(UTC))
    print(lecture.id)
    print(f"Stopped lecture {lecture.id}: {_describe(lecture, zone)}", file=sys.stderr)
    return 0


def _lecture_import(args: argparse.Namespace) -> int:
    from aggregator.timetable import read_csv_timetable, read_ics_timetable

    zone = resolve_zone(args.tz)
    suffix = args.path.suffix.lower()
    if suffix == ".csv":
        entries = read_csv_timetable(args.path, args.room, zone)
        source = LectureSource.CSV
    elif suffix in (".ics", ".ical"):
        start = _range_time(args.range_from, zone, "--from") if args.range_from else None
        end = _range_time(args.range_to, zone, "--to") if args.range_to else None
        entries = read_ics_timetable(args.path, args.room, zone, start, end)
        source = LectureSource.ICS
    else:
        raise ConfigError(f"Unknown timetable type {args.path.name!r}: give a .csv or .ics file")
    with Store.open(args.db) as store:
        result = store.import_timetable(entries, source)
    print(f"Imported {args.path.name}: {result.added} lectures added, {result.updated} updated", file=sys.stderr)
    return 0


def _range_time(text: str, zone: Zone, option: str) -> datetime:
    # A bare date means local midnight of that day.
    return parse_time(text if ("T" in text or " " in text.strip()) else f"{text}T00:00", zone, option)


def _report(args: argparse.Namespace) -> int:
    from aggregator import exports

    zone = resolve_zone(args.tz)
    if args.lecture_id is not None:
        if args.room or args.course:
            raise ConfigError("Give either a LECTURE_ID or --room/--course with --from and --to, not both")
        with Store.open(args.db) as store:
            report = compute_report(store, args.lecture_id, zone, step_s=args.step_s)
        renderers = {"text": render_text, "csv": exports.lecture_csv, "json": exports.lecture_json}
        if args.format == "html":
            from aggregator.html_report import render_lecture_html

            output = render_lecture_html(report)
        else:
            output = renderers[args.format](report)
    else:
        if not (args.range_from and args.range_to):
            raise ConfigError("A report needs a LECTURE_ID, or --room or --course with --from and --to")
        start = _range_time(args.range_from, zone, "--from")
        end = _range_time(args.range_to, zone, "--to")
        with Store.open(args.db) as store:
            range_report = compute_range_report(store, zone, start, end, room=args.room, course=args.course)
        range_renderers = {"text": render_range_text, "csv": exports.range_csv, "json": exports.range_json}
        if args.format == "html":
            from aggregator.html_report import render_range_html

            output = render_range_html(range_report)
        else:
            output = range_renderers[args.format](range_report)
    if args.output is None:
        sys.stdout.write(output)
        return 0
    try:
        args.output.write_text(output, encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"Cannot write the report to --output {str(args.output)!r}: {error}") from None
    print(f"Wrote {args.format} report to {args.output}", file=sys.stderr)
    return 0


def _devices(args: argparse.Namespace) -> int:
    zone = resolve_zone(args.tz)
    now = datetime.now(UTC)
    with Store.open(args.db) as store:
        devices = list_devices(store)
    if not devices:
        print("No devices yet: they appear with their first window, status or stats message", file=sys.stderr)
        return 0
    print(f"{'device':<20}  {'room':<12}  {'status':<8}  {'last seen':<19}  {'ago':>9}  flag   (times in {zone.name})")
    silent = 0
    for device in devices:
        ago_s = (now - device.last_seen).total_seconds()
        flag = "SILENT" if device.silent(now, args.silent_after_s) else ""
        silent += bool(flag)
        last_seen = device.last_seen.astimezone(zone.tzinfo)
        print(
            f"{device.device_id:<20}  {device.room or '-':<12}  {device.status or '-':<8}  "
            f"{last_seen:%Y-%m-%d %H:%M:%S}  {ago_s:>8.0f}s  {flag}".rstrip()
        )
    print(f"{len(devices)} devices, {silent} silent (offline, or nothing for {args.silent_after_s:g} s)", file=sys.stderr)
    return 0


def _purge(args: argparse.Namespace) -> int:
    if args.retention_days < 1:
        raise ConfigError(f"Invalid --retention-days {args.retention_days}: use at least 1")
    cutoff = datetime.now(UTC) - timedelta(days=args.retention_days)
    with Store.open(args.db) as store:
        result = store.purge_before(cutoff)
    print(
        f"Purged data before {cutoff.isoformat(timespec='seconds')} ({args.retention_days} days): "
        f"{result.windows} windows, {result.lectures} lectures, {result.devices} devices",
        file=sys.stderr,
    )
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
