"""Self-contained HTML pages of lecture and range reports: no script, no external file.

Charts are inline PNG images (see ``aggregator.charts``). Every text from the database
(titles, rooms, labels) is HTML-escaped.
"""

from __future__ import annotations

from datetime import datetime
from html import escape

from aggregator import charts
from aggregator.range_report import RangeReport
from aggregator.report import LectureReport
from aggregator.times import format_offset

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 0.2em 0.8em; text-align: right; border-bottom: 1px solid #eee; }
th:first-child, td:first-child { text-align: left; }
.meta { color: #555; }
.note { color: #555; font-size: 0.9em; max-width: 45em; }
img { max-width: 100%; }
"""

NOTE = (
    "Shares count facial expressions as one model reads them in the camera's view, not feelings. "
    "Suppressed windows had fewer faces than the configured minimum and carry no shares."
)


def _page(title: str, body: list[str]) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _clock(moment: datetime) -> str:
    return f"{moment:%H:%M:%S}" if moment.second or moment.microsecond else f"{moment:%H:%M}"


def _image(source: str, alt: str, element_id: str) -> str:
    return f'<img id="{element_id}" src="{source}" alt="{escape(alt)}">'


def render_lecture_html(report: LectureReport) -> str:
    """Return the lecture report as one HTML page with its charts inline."""
    lecture = report.lecture
    zone = report.zone.tzinfo
    start = lecture.start.astimezone(zone)
    end = lecture.end.astimezone(zone)
    coverage = report.coverage
    percent = f"{coverage.percent:.1f} %" if coverage.percent is not None else "no device sent windows"
    body = [
        f"<h1>Lecture {lecture.id}: {escape(lecture.title)}</h1>",
        f'<p class="meta">Room {escape(lecture.room)}'
        + (f" · course {escape(lecture.course)}" if lecture.course else "")
        + f" · {start:%Y-%m-%d} {_clock(start)} to {_clock(end)} {format_offset(start)} ({escape(report.zone.name)})</p>",
        f'<p class="note">{NOTE}</p>',
        "<h2>Coverage</h2>",
        '<table id="coverage">',
        f"<tr><td>Windows received</td><td>{coverage.windows_received} of {coverage.windows_expected} ({percent})</td></tr>",
        f"<tr><td>Suppressed windows</td><td>{coverage.suppressed_windows}</td></tr>",
        f"<tr><td>Face detections</td><td>{coverage.face_detections}</td></tr>",
        f"<tr><td>Classified faces</td><td>{coverage.classified_faces}</td></tr>",
        f"<tr><td>Devices</td><td>{len(coverage.devices)}</td></tr>",
        "</table>",
    ]
    if report.timeline:
        body.append(_image(charts.coverage(report), "Windows per step: with shares, suppressed, expected", "coverage-chart"))
    body.append("<h2>Emotion shares</h2>")
    if coverage.classified_faces:
        labels = [share.label for share in report.shares]
        body.append(
            _image(
                charts.distribution(labels, [s.percent for s in report.shares], [s.count for s in report.shares]),
                "Overall distribution of labels",
                "distribution-chart",
            )
        )
        body.append('<table id="shares"><tr><th>label</th><th>%</th><th>faces</th></tr>')
        for share in report.shares:
            body.append(f"<tr><td>{escape(share.label)}</td><td>{share.percent:.1f}</td><td>{share.count}</td></tr>")
        body.append("</table>")
        body.append(f"<h2>Shares over time ({report.step_s} s steps)</h2>")
        body.append(_image(charts.shares_over_time(report), "Shares of each label per step", "timeline-chart"))
    else:
        body.append("<p>No classified faces in this lecture.</p>")
    return _page(f"Lecture {lecture.id}: {lecture.title}", body)


def render_range_html(report: RangeReport) -> str:
    """Return the room or course report as one HTML page with the trend across its lectures."""
    zone = report.zone.tzinfo
    start = report.start.astimezone(zone)
    end = report.end.astimezone(zone)
    body = [
        f"<h1>{report.scope.capitalize()} {escape(report.name)}</h1>",
        f'<p class="meta">{len(report.lectures)} lectures from {start:%Y-%m-%d} to {end:%Y-%m-%d} '
        f"({escape(report.zone.name)})</p>",
        f'<p class="note">{NOTE}</p>',
    ]
    if report.classified_faces:
        body.append("<h2>Trend across lectures</h2>")
        body.append(_image(charts.trend(report), "Shares of each label per lecture", "trend-chart"))
        body.append("<h2>Overall distribution</h2>")
        body.append(
            _image(
                charts.distribution(report.labels, [s.percent for s in report.shares], [s.count for s in report.shares]),
                "Overall distribution of labels",
                "distribution-chart",
            )
        )
    body.append("<h2>Lectures</h2>")
    header = "".join(f"<th>{escape(label)} %</th>" for label in report.labels)
    body.append(f'<table id="lectures"><tr><th>start</th><th>id</th><th>title</th><th>coverage</th><th>faces</th>{header}</tr>')
    for summary in report.lectures:
        lecture = summary.lecture
        coverage = f"{summary.coverage_percent:.0f} %" if summary.coverage_percent is not None else "-"
        shares = "".join(
            f"<td>{s.percent:.1f}</td>" if summary.classified_faces else "<td>-</td>" for s in summary.shares
        )
        body.append(
            f"<tr><td>{lecture.start.astimezone(zone):%Y-%m-%d %H:%M}</td><td>{lecture.id}</td>"
            f"<td>{escape(lecture.title)}</td><td>{coverage}</td><td>{summary.classified_faces}</td>{shares}</tr>"
        )
    body.append("</table>")
    return _page(f"{report.scope.capitalize()} {report.name}", body)
