"""Plain-text rendering of a ``LectureReport`` for the terminal."""

from __future__ import annotations

from datetime import datetime

from aggregator.plural import counted
from aggregator.range_report import RangeReport
from aggregator.report import LectureReport, StepStatus, TimelineStep
from aggregator.times import format_offset

LABEL_COLUMN_MIN_WIDTH = 6


def render_text(report: LectureReport) -> str:
    """Return the report as text: header, coverage, emotion shares and timeline."""
    sections = [_header(report), _coverage(report), _shares(report), _timeline(report)]
    return "\n\n".join(sections) + "\n"


def _local(moment: datetime, report: LectureReport) -> datetime:
    return moment.astimezone(report.zone.tzinfo)


def _header(report: LectureReport) -> str:
    lecture = report.lecture
    start = _local(lecture.start, report)
    end = _local(lecture.end, report)
    return "\n".join(
        [
            f"Lecture {lecture.id}: {lecture.title}",
            f"Room:   {lecture.room}",
            f"Start:  {start:%Y-%m-%d %H:%M:%S} {format_offset(start)}",
            f"End:    {end:%Y-%m-%d %H:%M:%S} {format_offset(end)}",
            f"Zone:   {report.zone.name}",
        ]
    )


def _coverage(report: LectureReport) -> str:
    coverage = report.coverage
    percent = f" ({coverage.percent:.1f} %)" if coverage.percent is not None else ""
    received = f"{coverage.windows_received} of {coverage.windows_expected} expected{percent}"
    lines = [
        "Coverage",
        f"  Windows received:    {received}",
        f"  Suppressed windows:  {coverage.suppressed_windows}",
        f"  Frames sampled:      {coverage.frames_sampled}",
        f"  Face detections:     {coverage.face_detections}",
        f"  Classified faces:    {coverage.classified_faces}",
        f"  Devices:             {len(coverage.devices)}",
    ]
    for device in coverage.devices:
        lines.append(
            f"    {device.device_id}: {device.window_s:g} s windows, "
            f"{device.windows_received} of {device.windows_expected} received, "
            f"{device.suppressed_windows} suppressed"
        )
    return "\n".join(lines)


def _shares(report: LectureReport) -> str:
    classified = report.coverage.classified_faces
    if classified == 0:
        return "Emotion shares\n  no classified faces"
    width = max(len(share.label) for share in report.shares)
    lines = [f"Emotion shares (% of {classified} classified faces)"]
    for share in report.shares:
        lines.append(f"  {share.label:<{width}}  {share.percent:5.1f} %  {share.count:>8}")
    return "\n".join(lines)


def _timeline(report: LectureReport) -> str:
    time_format = _time_format(report)
    time_width = max(
        len("time"), *(len(_format_time(step.start, report, time_format)) for step in report.timeline)
    )
    label_widths = [max(len(label), LABEL_COLUMN_MIN_WIDTH) for label in report.labels]

    header = [f"{'time':<{time_width}}", f"{'windows':>7}", f"{'faces':>6}"]
    header += [f"{label:>{width}}" for label, width in zip(report.labels, label_widths, strict=True)]
    header.append("dominant")
    lines = [f"Timeline ({report.step_s} s steps, shares in % of classified faces)", "  " + "  ".join(header)]

    for step in report.timeline:
        cells = [
            f"{_format_time(step.start, report, time_format):<{time_width}}",
            f"{step.windows:>7}",
            f"{_faces_cell(step):>6}",
        ]
        if step.status is StepStatus.DATA:
            cells += [
                f"{share.percent:>{width}.1f}" for share, width in zip(step.shares, label_widths, strict=True)
            ]
            cells.append(step.dominant or "-")
        else:
            cells.append(step.status.value)
        lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines)


def _faces_cell(step: TimelineStep) -> str:
    return str(step.classified_faces) if step.status is StepStatus.DATA else "-"


def _time_format(report: LectureReport) -> str:
    """Choose the shortest local time format that distinguishes all timeline steps.

    Seconds appear when a step does not start on a whole minute, the date when the
    lecture spans local midnight, and the UTC offset when it spans a daylight saving
    change, where the same clock time can occur twice.
    """
    local_starts = [_local(step.start, report) for step in report.timeline]
    time_format = "%H:%M"
    if any(moment.second or moment.microsecond for moment in local_starts):
        time_format = "%H:%M:%S"
    if len({moment.date() for moment in local_starts}) > 1:
        time_format = "%Y-%m-%d " + time_format
    if len({moment.utcoffset() for moment in local_starts}) > 1:
        time_format += " %z"
    return time_format


def _format_time(moment: datetime, report: LectureReport, time_format: str) -> str:
    return _local(moment, report).strftime(time_format)


def render_range_text(report: RangeReport) -> str:
    """Return a room or course report as text: one row per lecture, then the overall shares."""
    zone = report.zone.tzinfo
    lines = [
        f"{report.scope.capitalize()} {report.name}: {counted(len(report.lectures), 'lecture')} from "
        f"{report.start.astimezone(zone):%Y-%m-%d} to {report.end.astimezone(zone):%Y-%m-%d} ({report.zone.name})",
        "",
    ]
    label_widths = [max(len(label), LABEL_COLUMN_MIN_WIDTH) for label in report.labels]
    header = [f"{'start':<16}", f"{'id':>5}", f"{'coverage':>8}", f"{'faces':>7}"]
    header += [f"{label:>{width}}" for label, width in zip(report.labels, label_widths, strict=True)]
    lines.append("  " + "  ".join(header) + "  title")
    for summary in report.lectures:
        coverage = f"{summary.coverage_percent:.0f} %" if summary.coverage_percent is not None else "-"
        cells = [
            f"{summary.lecture.start.astimezone(zone):%Y-%m-%d %H:%M}",
            f"{summary.lecture.id:>5}",
            f"{coverage:>8}",
            f"{summary.classified_faces:>7}",
        ]
        for share, width in zip(summary.shares, label_widths, strict=True):
            cells.append(f"{share.percent:>{width}.1f}" if summary.classified_faces else f"{'-':>{width}}")
        lines.append("  " + "  ".join(cells) + f"  {summary.lecture.title}")
    lines.append("")
    lines.append(f"Emotion shares over all lectures (% of {report.classified_faces} classified faces)")
    for share in sorted(report.shares, key=lambda item: -item.count):
        lines.append(f"  {share.label:<10}  {share.percent:5.1f} %  {share.count:>8}")
    return "\n".join(lines) + "\n"
