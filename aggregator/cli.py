"""Command line of the aggregator.

Commands: ``run``, ``devices``, ``lecture add | list | start | stop | import``,
``report`` (one lecture, or a room or course over a date range) and ``purge``.

Exit status: 0 on success, 2 for invalid options or values (including an unknown
lecture id), 1 for runtime failures such as an unreachable broker or database.
Every error is one line on stderr that names the value at fault and the fix.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

from aggregator import __version__
from aggregator.devices import DEFAULT_SILENT_AFTER_S, check_silent_after_s, list_devices
from aggregator.errors import AggregatorError, ConfigError
from aggregator.ingest import Ingest, IngestSettings, default_client_id
from aggregator.plural import counted
from aggregator.range_report import compute_range_report
from aggregator.report import DEFAULT_STEP_S, MAX_STEP_S, check_step_s, compute_report
from aggregator.store import (
    DEFAULT_DB_URL,
    MAX_AD_HOC_LENGTH,
    Lecture,
    LectureRunningError,
    LectureSource,
    Store,
    parse_database_url,
)
from aggregator.text_report import render_range_text, render_text
from aggregator.times import Zone, format_offset, parse_day_or_time, parse_time, resolve_zone
from aggregator.timetable import (
    adopt_earlier_uids,
    check_lecture_fields,
    read_csv_timetable,
    read_ics_timetable,
)
from edge_agent import sd_notify
from edge_agent.payload import DEFAULT_TOPIC_PREFIX

log = logging.getLogger("aggregator")

DB_ENVIRONMENT_VARIABLE = "AGGREGATOR_DB"
PASSWORD_ENVIRONMENT_VARIABLE = "AGGREGATOR_MQTT_PASSWORD"
RETENTION_ENVIRONMENT_VARIABLE = "AGGREGATOR_RETENTION_DAYS"
DEFAULT_RETENTION_DAYS = 365
# 100 years: longer than any retention rule, and the cutoff date stays far from year 1.
MAX_RETENTION_DAYS = 36_500
DEFAULT_AD_HOC_MIN = 90
# Longest planned length of an ad hoc lecture. 'lecture stop' ends one at most this long after its start.
MAX_AD_HOC_MIN = int(MAX_AD_HOC_LENGTH.total_seconds()) // 60
REPORT_FORMATS = ("text", "csv", "json", "html")
# Lecture ids are 64-bit integers in both databases.
MAX_LECTURE_ID = 2**63 - 1
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one aggregator command and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.log_level or ("INFO" if args.command == "run" else "WARNING"))
    if argv is None:
        # Run as a program, the objects of the modules imported so far live as long as the
        # process. Freezing them keeps each full garbage collection from scanning them, which
        # paused a report query or the ingest for 20 to 60 ms. Callers that pass argv (tests)
        # keep their own collector settings.
        gc.freeze()
    try:
        return args.handler(args)
    except AggregatorError as error:
        print(f"aggregator: error: {error}", file=sys.stderr)
        return error.exit_code
    except BrokenPipeError:
        # The reader of standard output, such as 'head', closed it early. Output sent to
        # devnull keeps the flush at exit from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


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
    # Read as text, so that a value such as 'inf' or '1.5' gets the same message as one out of range.
    report.add_argument(
        "--step-s",
        default=str(DEFAULT_STEP_S),
        help=f"length of one timeline row of a lecture report in seconds, 1 to {MAX_STEP_S} "
        f"(default: {DEFAULT_STEP_S})",
    )
    report.set_defaults(handler=_report)

    devices = commands.add_parser(
        "devices", parents=[database, zone], help="list devices and flag silent and paused ones"
    )
    devices.add_argument(
        "--silent-after-s",
        type=float,
        default=DEFAULT_SILENT_AFTER_S,
        help="flag a device silent after this many seconds without a message, above 0 and at most "
        f"366 days (default: {DEFAULT_SILENT_AFTER_S})",
    )
    devices.set_defaults(handler=_devices)

    purge = commands.add_parser(
        "purge", parents=[database], help="delete windows, lectures and devices older than the retention period"
    )
    # The environment variable is read by 'purge' only, so an invalid value breaks no other command.
    purge.add_argument(
        "--retention-days",
        type=int,
        default=None,
        help=f"days to keep, 1 to {MAX_RETENTION_DAYS} "
        f"(default: ${RETENTION_ENVIRONMENT_VARIABLE}, else {DEFAULT_RETENTION_DAYS})",
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
    add.add_argument("--course", help="course, for the course trend report")
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
        help=f"end used until 'lecture stop', in minutes after the start, 1 to {MAX_AD_HOC_MIN} "
        f"(default: {DEFAULT_AD_HOC_MIN})",
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
    timetable.add_argument(
        "--from", dest="range_from", help="for .ics: import events from this date or time (in --tz)"
    )
    timetable.add_argument(
        "--to", dest="range_to", help="for .ics: import events up to this date or time (in --tz)"
    )
    timetable.set_defaults(handler=_lecture_import)


def _read_password(args: argparse.Namespace) -> str | None:
    if args.password_file is not None:
        try:
            return args.password_file.read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError) as error:
            raise ConfigError(f"Cannot read the MQTT password from --password-file {str(args.password_file)!r}: {error}") from None
    return os.environ.get(PASSWORD_ENVIRONMENT_VARIABLE) or None


def _run(args: argparse.Namespace) -> int:
    if args.password_file is not None and not args.username:
        raise ConfigError(
            f"--password-file {str(args.password_file)!r} needs --username: the broker checks a password "
            "only with a username. Add --username NAME, or drop --password-file"
        )
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
    check_lecture_fields("lecture add", args.room, args.title, args.course)
    start = parse_time(args.start, zone, "--start")
    end = parse_time(args.end, zone, "--end")
    if end <= start:
        raise ConfigError(f"--end {args.end!r} is not after --start {args.start!r}: correct or swap them")
    with Store.open(args.db) as store:
        lecture = store.add_lecture(
            room=args.room, title=args.title, start=start, end=end, course=args.course
        )
    print(lecture.id)
    print(f"Added lecture {lecture.id}: {_describe(lecture, zone)}", file=sys.stderr)
    return 0


def _lecture_list(args: argparse.Namespace) -> int:
    zone = resolve_zone(args.tz)
    with _open_existing_store(args.db) as store:
        lectures = store.list_lectures(room=args.room)
    if not lectures:
        if args.room is None:
            print("No lectures yet: add one with 'aggregator lecture add'", file=sys.stderr)
        else:
            print(
                f"No lectures in room {args.room!r}: check the room name, or add one with "
                "'aggregator lecture add'",
                file=sys.stderr,
            )
        return 0
    header = ("id", "date", "start", "end", "duration", "room")
    rows = [_lecture_row(lecture, zone) for lecture in lectures]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    print(_table_line(header, widths, f"title   (times in {zone.name})"))
    for row, lecture in zip(rows, lectures, strict=True):
        print(_table_line(row, widths, lecture.title))
    return 0


def _table_line(cells: Sequence[str], widths: Sequence[int], last: str) -> str:
    # The id column is aligned right and the others left. The last column is not padded.
    padded = [cells[0].rjust(widths[0])]
    padded += [cell.ljust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
    return "  ".join([*padded, last])


def _lecture_row(lecture: Lecture, zone: Zone) -> tuple[str, str, str, str, str, str]:
    """Return the id, date, start, end, duration and room of a lecture as ``lecture list`` shows them.

    Times are on the clock of ``zone``, cut to whole seconds, and show seconds only when
    they are not zero. The end shows its date when that differs from the start's. The
    duration is the time between start and end in UTC, so a daylight saving change
    between them does not add or remove an hour.
    """
    start = lecture.start.astimezone(zone.tzinfo).replace(microsecond=0)
    end = lecture.end.astimezone(zone.tzinfo).replace(microsecond=0)
    end_text = _clock_time(end) if end.date() == start.date() else f"{end:%Y-%m-%d} {_clock_time(end)}"
    return (
        str(lecture.id),
        f"{start:%a %Y-%m-%d}",
        _clock_time(start),
        end_text,
        _format_duration(_utc_seconds(lecture.start, lecture.end)),
        lecture.room,
    )


def _utc_seconds(start: datetime, end: datetime) -> float:
    # Aware datetimes with the same tzinfo subtract on the local clock, so both are taken in UTC.
    whole_end = end.astimezone(UTC).replace(microsecond=0)
    return (whole_end - start.astimezone(UTC).replace(microsecond=0)).total_seconds()


def _clock_time(moment: datetime) -> str:
    return f"{moment:%H:%M:%S}" if moment.second else f"{moment:%H:%M}"


def _format_duration(seconds: float) -> str:
    """Return a duration such as '1 h 30 min', '45 min' or '2 min 30 s', in whole seconds."""
    hours, rest = divmod(round(seconds), 3600)
    minutes, whole_seconds = divmod(rest, 60)
    parts = []
    if hours:
        parts.append(f"{hours} h")
    if minutes:
        parts.append(f"{minutes} min")
    if whole_seconds or not parts:
        parts.append(f"{whole_seconds} s")
    return " ".join(parts)


def _lecture_start(args: argparse.Namespace) -> int:
    zone = resolve_zone(args.tz)
    if not 1 <= args.planned_min <= MAX_AD_HOC_MIN:
        raise ConfigError(
            f"Invalid --planned-min {args.planned_min}: use 1 to {MAX_AD_HOC_MIN} minutes, and end the "
            "lecture with 'aggregator lecture stop'"
        )
    check_lecture_fields("lecture start", args.room, args.title, args.course)
    # The store starts the lecture at now cut to whole seconds, so the planned end is cut too.
    exact_now = datetime.now(UTC)
    planned_end = exact_now.replace(microsecond=0) + timedelta(minutes=args.planned_min)
    with Store.open(args.db) as store:
        try:
            lecture = store.start_ad_hoc_lecture(
                args.room, args.title, exact_now, planned_end, course=args.course
            )
        except LectureRunningError as error:
            running = error.running
            raise ConfigError(
                f"Lecture {running.id} {running.title!r} already runs in room {args.room!r} since "
                f"{_local_time(running.start, zone)}: end it with "
                f"'aggregator lecture stop --room {shlex.quote(args.room)}' before you start another"
            ) from None
    print(lecture.id)
    print(f"Started lecture {lecture.id}: {_describe(lecture, zone)}", file=sys.stderr)
    return 0


def _lecture_stop(args: argparse.Namespace) -> int:
    zone = resolve_zone(args.tz)
    with _open_existing_store(args.db) as store:
        lecture = store.stop_lecture(args.room, datetime.now(UTC))
    print(lecture.id)
    print(f"Stopped lecture {lecture.id}: {_describe(lecture, zone)}", file=sys.stderr)
    return 0


def _lecture_import(args: argparse.Namespace) -> int:
    zone = resolve_zone(args.tz)
    suffix = args.path.suffix.lower()
    if suffix == ".csv":
        if args.range_from or args.range_to:
            raise ConfigError(
                "--from and --to apply to .ics files only: a CSV timetable lists each lecture, "
                "so drop them and delete the rows you do not want"
            )
        entries = read_csv_timetable(args.path, args.room, zone)
        if not entries:
            print(f"No lectures in {args.path.name}: it has only a header, nothing imported", file=sys.stderr)
            return 0
        with Store.open(args.db) as store:
            result = store.import_timetable(entries, LectureSource.CSV)
    elif suffix in (".ics", ".ical"):
        start = parse_day_or_time(args.range_from, zone, "--from") if args.range_from else None
        end = parse_day_or_time(args.range_to, zone, "--to") if args.range_to else None
        if start is not None and end is not None and end <= start:
            raise ConfigError(
                f"--to {args.range_to!r} is not after --from {args.range_from!r}: correct or swap them"
            )
        timetable = read_ics_timetable(args.path, args.room, zone, start, end)
        if not timetable.entries:
            scope = f" from {args.range_from}" if args.range_from else ""
            scope += f" to {args.range_to}" if args.range_to else ""
            print(f"No lectures in {args.path.name}{scope}: nothing imported", file=sys.stderr)
            return 0
        with Store.open(args.db) as store:
            adopt_earlier_uids(store, timetable)
            result = store.import_timetable(timetable.entries, LectureSource.ICS)
    else:
        raise ConfigError(f"Unknown timetable type {args.path.name!r}: give a .csv or .ics file")
    print(
        f"Imported {args.path.name}: {counted(result.added, 'lecture')} added, {result.updated} updated; "
        f"{_local_times_note(suffix, zone, args.tz)}",
        file=sys.stderr,
    )
    return 0


def _local_times_note(suffix: str, zone: Zone, tz_option: str | None) -> str:
    """Return which zone the import read local times in, for its summary line."""
    local_times = "times without a UTC offset" if suffix == ".csv" else "floating times (without TZID or Z)"
    zone_source = "from --tz" if tz_option else "the system zone: give --tz to choose another"
    return f"{local_times} were read in {zone.name} ({zone_source})"


def _report(args: argparse.Namespace) -> int:
    zone = resolve_zone(args.tz)
    # Checked for range reports too, although only a lecture report has a timeline.
    step_s = _step_seconds(args.step_s)
    if args.lecture_id is not None:
        if args.room or args.course or args.range_from or args.range_to:
            raise ConfigError(
                f"Give either LECTURE_ID {args.lecture_id} or --room/--course with --from and --to, not both"
            )
        if not 1 <= args.lecture_id <= MAX_LECTURE_ID:
            raise ConfigError(
                f"Invalid LECTURE_ID {args.lecture_id}: use an id that 'aggregator lecture list' shows"
            )
        output = _lecture_report(args, zone, step_s)
    else:
        output = _range_report(args, zone)
    if args.output is None:
        sys.stdout.write(output)
        return 0
    try:
        args.output.write_text(output, encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"Cannot write the report to --output {str(args.output)!r}: {error}") from None
    print(f"Wrote {args.format} report to {args.output}", file=sys.stderr)
    return 0


def _step_seconds(text: str) -> int:
    """Return --step-s as a whole number of seconds from 1 to MAX_STEP_S, with the library's check."""
    try:
        step_s = int(text)
    except ValueError:
        # check_step_s rejects the text with the same message as an out-of-range number.
        return check_step_s(text)
    return check_step_s(step_s)


def _lecture_report(args: argparse.Namespace, zone: Zone, step_s: int) -> str:
    from aggregator import exports

    with _open_existing_store(args.db) as store:
        report = compute_report(store, args.lecture_id, zone, step_s=step_s)
    if args.format == "html":
        from aggregator.html_report import render_lecture_html

        return render_lecture_html(report)
    renderers = {"text": render_text, "csv": exports.lecture_csv, "json": exports.lecture_json}
    return renderers[args.format](report)


def _range_report(args: argparse.Namespace, zone: Zone) -> str:
    from aggregator import exports

    ranged = bool(args.range_from or args.range_to)
    if not (args.room or args.course):
        if ranged:
            raise ConfigError("A report from --from to --to needs --room ROOM or --course COURSE")
        raise ConfigError("A report needs a LECTURE_ID, or --room or --course with --from and --to")
    if args.room and args.course:
        raise ConfigError("Give either --room or --course for a report over a date range, not both")
    if not (args.range_from and args.range_to):
        raise ConfigError(
            "A room or course report needs both --from and --to, such as --from 2026-03-01 --to 2026-04-01"
        )
    start = parse_day_or_time(args.range_from, zone, "--from")
    end = parse_day_or_time(args.range_to, zone, "--to")
    if end <= start:
        raise ConfigError(
            f"--to {args.range_to!r} is not after --from {args.range_from!r}: correct or swap them"
        )
    with _open_existing_store(args.db) as store:
        range_report = compute_range_report(store, zone, start, end, room=args.room, course=args.course)
    if args.format == "html":
        from aggregator.html_report import render_range_html

        return render_range_html(range_report)
    renderers = {"text": render_range_text, "csv": exports.range_csv, "json": exports.range_json}
    return renderers[args.format](range_report)


def _devices(args: argparse.Namespace) -> int:
    zone = resolve_zone(args.tz)
    check_silent_after_s(args.silent_after_s, "--silent-after-s")
    now = datetime.now(UTC)
    with _open_existing_store(args.db) as store:
        devices = list_devices(store)
    if not devices:
        print("No devices yet: they appear with their first window, status or stats message", file=sys.stderr)
        return 0
    print(
        f"{'device':<20}  {'room':<12}  {'status':<8}  {'counting':<8}  {'last seen':<19}  {'ago':>9}  flag   "
        f"(times in {zone.name})"
    )
    silent = paused = 0
    for device in devices:
        ago_s = (now - device.last_seen).total_seconds()
        flags = []
        if device.silent(now, args.silent_after_s):
            flags.append("SILENT")
            silent += 1
        # A paused agent sends no windows, so its lectures show gaps until it is resumed.
        if device.counting == "paused":
            flags.append("PAUSED")
            paused += 1
        last_seen = device.last_seen.astimezone(zone.tzinfo)
        print(
            f"{device.device_id:<20}  {device.room or '-':<12}  {device.status or '-':<8}  "
            f"{device.counting or '-':<8}  {last_seen:%Y-%m-%d %H:%M:%S}  {ago_s:>8.0f}s  {' '.join(flags)}".rstrip()
        )
    print(
        f"{counted(len(devices), 'device')}, {silent} silent (offline, or nothing for {args.silent_after_s:.15g} s), "
        f"{paused} with counting paused",
        file=sys.stderr,
    )
    return 0


def _purge(args: argparse.Namespace) -> int:
    retention_days = _retention_days(args.retention_days)
    cutoff = datetime.now(UTC) - timedelta(days=retention_days)
    with Store.open(args.db) as store:
        result = store.purge_before(cutoff)
    print(
        f"Purged data before {cutoff.isoformat(timespec='seconds')} ({retention_days} days): "
        f"{counted(result.windows, 'window')}, {counted(result.lectures, 'lecture')}, "
        f"{counted(result.devices, 'device')}",
        file=sys.stderr,
    )
    return 0


def _retention_days(option: int | None) -> int:
    """Return the retention period in days: --retention-days, else $AGGREGATOR_RETENTION_DAYS, else 365.

    Raises:
        ConfigError: the value is not a whole number from 1 to MAX_RETENTION_DAYS.
    """
    allowed = f"use a whole number of days from 1 to {MAX_RETENTION_DAYS}"
    if option is not None:
        days, source = option, f"--retention-days {option}"
    else:
        text = os.environ.get(RETENTION_ENVIRONMENT_VARIABLE, "").strip()
        if not text:
            return DEFAULT_RETENTION_DAYS
        source = f"{RETENTION_ENVIRONMENT_VARIABLE} {text!r}"
        try:
            days = int(text)
        except ValueError:
            raise ConfigError(
                f"Invalid {source}: {allowed}, or unset it for {DEFAULT_RETENTION_DAYS}"
            ) from None
    if not 1 <= days <= MAX_RETENTION_DAYS:
        raise ConfigError(f"Invalid {source}: {allowed}")
    return days


def _open_existing_store(url: str) -> Store:
    """Open the database of a command that reads or changes existing rows only.

    Such a command creates no database and no tables, because a mistyped --db would then
    look like a database without lectures. A missing SQLite file and a database without the
    aggregator's tables (an empty file, or an empty PostgreSQL database) are errors. A
    schema that an older version created is upgraded, as every command does, because
    the queries need the current one.
    """
    path = _sqlite_file(url)
    if path is not None and not path.exists():
        raise ConfigError(
            f"No database at {str(path)!r}: check --db or ${DB_ENVIRONMENT_VARIABLE}. "
            "'aggregator run' and 'aggregator lecture add' create a new one"
        )
    # SQLite writes a header into an empty file as soon as a connection sets WAL mode.
    if path is not None and path.is_file() and path.stat().st_size == 0:
        raise _no_tables_error(str(path))
    with Store.open(url, upgrade=False) as store:
        if store.schema_revision() is None:
            raise _no_tables_error(store.display_url)
    return Store.open(url)


def _no_tables_error(database: str) -> ConfigError:
    return ConfigError(
        f"The database {database} contains no aggregator tables yet: check --db or "
        f"${DB_ENVIRONMENT_VARIABLE}, or create the tables by starting 'aggregator run' with this "
        "--db, or by adding lectures with 'aggregator lecture add' or 'aggregator lecture import'"
    )


def _sqlite_file(url: str) -> Path | None:
    try:
        parsed = parse_database_url(url)
    except ConfigError:
        return None  # Store.open reports the malformed URL.
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    # In-memory databases and SQLite URI file names are left to Store.open.
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def _local_time(moment: datetime, zone: Zone) -> str:
    local = moment.astimezone(zone.tzinfo)
    return f"{local:%Y-%m-%d %H:%M} {format_offset(local)}"


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
