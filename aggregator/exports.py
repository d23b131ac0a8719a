"""CSV and JSON renderings of lecture and range reports.

Times are ISO 8601 in the report's zone, with their UTC offset, so a spreadsheet or a
script reads the school's clock without losing the instant. Shares are percentages of
classified faces; a step or lecture without classified faces has empty CSV cells and
JSON nulls instead of zeros.

Text that a teacher or a timetable wrote (room, course, title) starts with an
apostrophe in CSV when it would otherwise start with a character that spreadsheet
programs read as a formula.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import Any

from aggregator.range_report import RangeReport
from aggregator.report import LectureReport, StepStatus


def lecture_csv(report: LectureReport) -> str:
    """Return the lecture's timeline as CSV: one row per step, one share column per label."""
    output = io.StringIO()
    writer = csv.writer(output, lineterminator="\n")
    writer.writerow(
        ["lecture_id", "step_start", "step_end", "status", "windows", "suppressed_windows",
         "face_detections", "classified_faces", *[f"{label}_percent" for label in report.labels], "dominant"]
    )
    for step in report.timeline:
        shares = [f"{share.percent:.2f}" for share in step.shares] if step.status is StepStatus.DATA else [""] * len(report.labels)
        writer.writerow(
            [report.lecture.id, _local(step.start, report.zone.tzinfo), _local(step.end, report.zone.tzinfo),
             step.status.value, step.windows, step.suppressed_windows, step.face_detections,
             step.classified_faces, *shares, step.dominant or ""]
        )
    return output.getvalue()


def lecture_json(report: LectureReport) -> str:
    """Return the whole lecture report as JSON."""
    zone = report.zone.tzinfo
    lecture = report.lecture
    coverage = report.coverage
    data: dict[str, Any] = {
        "lecture": {
            "id": lecture.id,
            "room": lecture.room,
            "title": lecture.title,
            "course": lecture.course,
            "start": _local(lecture.start, zone),
            "end": _local(lecture.end, zone),
            "zone": report.zone.name,
        },
        "coverage": {
            "windows_received": coverage.windows_received,
            "windows_expected": coverage.windows_expected,
            "percent": coverage.percent,
            "suppressed_windows": coverage.suppressed_windows,
            "frames_sampled": coverage.frames_sampled,
            "face_detections": coverage.face_detections,
            "classified_faces": coverage.classified_faces,
            "devices": [
                {
                    "device_id": device.device_id,
                    "window_s": device.window_s,
                    "windows_received": device.windows_received,
                    "windows_expected": device.windows_expected,
                    "suppressed_windows": device.suppressed_windows,
                }
                for device in coverage.devices
            ],
        },
        "labels": list(report.labels),
        # Without classified faces a share has no percentage, as in the timeline and in CSV.
        "shares": [
            {"label": s.label, "count": s.count, "percent": s.percent if coverage.classified_faces else None}
            for s in report.shares
        ],
        "step_s": report.step_s,
        "timeline": [
            {
                "start": _local(step.start, zone),
                "end": _local(step.end, zone),
                "status": step.status.value,
                "windows": step.windows,
                "suppressed_windows": step.suppressed_windows,
                "face_detections": step.face_detections,
                "classified_faces": step.classified_faces,
                "percent": {s.label: s.percent for s in step.shares} if step.status is StepStatus.DATA else None,
                "dominant": step.dominant,
            }
            for step in report.timeline
        ],
    }
    return json.dumps(data, indent=2) + "\n"


def range_csv(report: RangeReport) -> str:
    """Return one CSV row per lecture of the range report."""
    zone = report.zone.tzinfo
    output = io.StringIO()
    writer = csv.writer(output, lineterminator="\n")
    writer.writerow(
        ["lecture_id", "room", "course", "title", "start", "end", "windows_received", "windows_expected",
         "suppressed_windows", "classified_faces", *[f"{label}_percent" for label in report.labels]]
    )
    for summary in report.lectures:
        lecture = summary.lecture
        shares = [f"{s.percent:.2f}" if summary.classified_faces else "" for s in summary.shares]
        writer.writerow(
            [lecture.id, _text_cell(lecture.room), _text_cell(lecture.course or ""), _text_cell(lecture.title),
             _local(lecture.start, zone),
             _local(lecture.end, zone), summary.windows_received, summary.windows_expected,
             summary.suppressed_windows, summary.classified_faces, *shares]
        )
    return output.getvalue()


def range_json(report: RangeReport) -> str:
    """Return the range report as JSON."""
    zone = report.zone.tzinfo
    data = {
        "scope": report.scope,
        "name": report.name,
        "from": _local(report.start, zone),
        "to": _local(report.end, zone),
        "zone": report.zone.name,
        "labels": list(report.labels),
        # Without classified faces a share has no percentage, as in the lecture report.
        "shares": [
            {"label": s.label, "count": s.count, "percent": s.percent if report.classified_faces else None}
            for s in report.shares
        ],
        "lectures": [
            {
                "id": summary.lecture.id,
                "room": summary.lecture.room,
                "course": summary.lecture.course,
                "title": summary.lecture.title,
                "start": _local(summary.lecture.start, zone),
                "end": _local(summary.lecture.end, zone),
                "windows_received": summary.windows_received,
                "windows_expected": summary.windows_expected,
                "coverage_percent": summary.coverage_percent,
                "suppressed_windows": summary.suppressed_windows,
                "classified_faces": summary.classified_faces,
                "percent": {s.label: s.percent for s in summary.shares} if summary.classified_faces else None,
            }
            for summary in report.lectures
        ],
    }
    return json.dumps(data, indent=2) + "\n"


# Characters that start a formula in spreadsheet programs, and the tab and carriage
# return that may come before one.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _text_cell(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _local(moment: datetime, zone: Any) -> str:
    return moment.astimezone(zone).isoformat()
