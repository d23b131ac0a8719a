"""Reports over a date range: the lectures of one room or one course, one summary each.

A ``RangeReport`` lists each lecture that starts in [start, end) with its coverage and
emotion shares, computed by ``aggregator.report`` with the same definitions, and the
shares over all of them. Its lecture order is the time order, so a course report is the
course's trend.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from aggregator.errors import ConfigError
from aggregator.report import MAX_STEP_S, LabelShare, LectureReport, build_report, order_labels
from aggregator.store import Lecture, Store, StoredWindow
from aggregator.times import Zone
from edge_agent.payload import FER2013_LABELS


@dataclass(frozen=True, slots=True)
class LectureSummary:
    """Coverage and shares of one lecture; ``shares`` follows the range report's label order."""

    lecture: Lecture
    windows_received: int
    windows_expected: int
    suppressed_windows: int
    classified_faces: int
    shares: tuple[LabelShare, ...]

    @property
    def coverage_percent(self) -> float | None:
        if self.windows_expected == 0:
            return None
        return 100.0 * self.windows_received / self.windows_expected


@dataclass(frozen=True, slots=True)
class RangeReport:
    """The lectures of a room or a course in [start, end), in time order. Times are UTC."""

    scope: str
    name: str
    start: datetime
    end: datetime
    zone: Zone
    labels: tuple[str, ...]
    lectures: tuple[LectureSummary, ...]
    shares: tuple[LabelShare, ...]
    # Faces of the distinct windows: a window inside two overlapping lectures counts once.
    classified_faces: int


def compute_range_report(
    store: Store, zone: Zone, start: datetime, end: datetime, *, room: str | None = None, course: str | None = None
) -> RangeReport:
    """Compute the report of the lectures of ``room`` or ``course`` that start in [start, end).

    Raises:
        ConfigError: neither or both of room and course are given, or end is not after start.
    """
    if (room is None) == (course is None):
        raise ConfigError("Give either --room or --course for a report over a date range, not both")
    if end <= start:
        raise ConfigError(f"--to {end.isoformat()} is not after --from {start.isoformat()}: correct them")
    lectures = store.list_lectures(room=room, course=course, start=start, end=end)
    reports = []
    # Lectures of one room may overlap (an ad hoc lecture during a timetabled one), so the
    # totals add up each window once, keyed like the windows table's unique constraint.
    distinct: dict[tuple[str, datetime], StoredWindow] = {}
    for lecture in lectures:
        windows = store.windows_in_room(lecture.room, lecture.start, lecture.end)
        # Only the totals are needed here, so the timeline gets one step, or a few for a
        # lecture longer than the largest step.
        step_s = min(MAX_STEP_S, max(1, math.ceil(lecture.duration_s)))
        reports.append(build_report(lecture, windows, zone, step_s=step_s))
        for window in windows:
            if lecture.start <= window.window_start < lecture.end:
                distinct[(window.device_id, window.window_start)] = window
    labels = order_labels(label for report in reports for label in report.labels) or tuple(FER2013_LABELS)
    summaries = tuple(_summary(report, labels) for report in reports)
    totals: Counter[str] = Counter()
    for window in distinct.values():
        if window.counts and not window.suppressed:
            totals.update(window.counts)
    return RangeReport(
        scope="room" if room is not None else "course",
        name=room if room is not None else str(course),
        start=start,
        end=end,
        zone=zone,
        labels=labels,
        lectures=summaries,
        shares=_shares(labels, totals),
        classified_faces=sum(totals.values()),
    )


def _summary(report: LectureReport, labels: tuple[str, ...]) -> LectureSummary:
    counts = Counter({share.label: share.count for share in report.shares})
    coverage = report.coverage
    return LectureSummary(
        lecture=report.lecture,
        windows_received=coverage.windows_received,
        windows_expected=coverage.windows_expected,
        suppressed_windows=coverage.suppressed_windows,
        classified_faces=coverage.classified_faces,
        shares=_shares(labels, counts),
    )


def _shares(labels: tuple[str, ...], counts: Counter[str]) -> tuple[LabelShare, ...]:
    total = sum(counts.values())
    return tuple(
        LabelShare(label, counts.get(label, 0), 100.0 * counts.get(label, 0) / total if total else 0.0)
        for label in labels
    )
