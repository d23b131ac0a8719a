"""Per-lecture report: coverage, emotion shares and a timeline, as typed records.

``compute_report`` returns a ``LectureReport`` that renderers turn into text (see
``aggregator.text_report``) or other formats. It reads only aggregate counts. Suppressed
windows contribute to coverage and face detections but never to shares.

Definitions used throughout:

- A window belongs to a lecture when its ``window_start`` lies in [lecture start, end)
  and its room is the lecture's room.
- Expected windows: for each device that sent a window in the lecture,
  ceil(lecture length / the device's most common window length). Devices that sent
  nothing in the whole lecture are not counted, because the aggregator has no list of
  devices per room yet.
- Shares are percentages of classified faces: the sum of ``counts`` over the windows
  that were not suppressed.
- A timeline step contains the windows whose start lies in [step start, step start + step).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from aggregator.errors import ConfigError
from aggregator.store import Lecture, Store, StoredWindow
from aggregator.times import Zone
from edge_agent.payload import FER2013_LABELS

DEFAULT_STEP_S = 60
# A timeline step longer than a year shows nothing new, and the bound keeps its timedelta
# far from overflowing. The CLI checks --step-s against the same bound.
MAX_STEP_S = 366 * 24 * 3600
# A timeline longer than this is unreadable as text and most likely comes from a wrong --step-s.
MAX_TIMELINE_STEPS = 10_000


@dataclass(frozen=True, slots=True)
class LabelShare:
    """Faces classified as one label and their percentage of all classified faces (0 to 100)."""

    label: str
    count: int
    percent: float


@dataclass(frozen=True, slots=True)
class DeviceCoverage:
    """Windows one device sent during the lecture, against those expected from its window length."""

    device_id: str
    window_s: float
    windows_received: int
    windows_expected: int
    suppressed_windows: int


@dataclass(frozen=True, slots=True)
class Coverage:
    """How much data the lecture has, summed over its devices."""

    devices: tuple[DeviceCoverage, ...]
    windows_received: int
    windows_expected: int
    suppressed_windows: int
    frames_sampled: int
    face_detections: int
    classified_faces: int

    @property
    def percent(self) -> float | None:
        """Windows received as a percentage of windows expected, or None when no device sent any."""
        if self.windows_expected == 0:
            return None
        return 100.0 * self.windows_received / self.windows_expected


class StepStatus(StrEnum):
    """Whether a timeline step has shares, only suppressed windows, or no windows."""

    DATA = "data"
    SUPPRESSED = "suppressed"
    NO_DATA = "no data"


@dataclass(frozen=True, slots=True)
class TimelineStep:
    """The windows that started in one step of the timeline. Times are UTC.

    ``shares`` has one entry per report label, in the report's label order, and is
    empty unless the status is DATA. ``dominant`` is the label with the most faces,
    the earlier label in that order on a tie, and None when no face was classified.
    """

    start: datetime
    end: datetime
    windows: int
    suppressed_windows: int
    face_detections: int
    classified_faces: int
    shares: tuple[LabelShare, ...]
    dominant: str | None
    status: StepStatus


@dataclass(frozen=True, slots=True)
class LectureReport:
    """Everything a renderer needs to show one lecture.

    ``labels`` lists every label seen in the lecture: the FER2013 labels in their class
    order, then any others alphabetically. ``shares`` covers the whole lecture, sorted
    by count, largest first.
    """

    lecture: Lecture
    zone: Zone
    step_s: int
    labels: tuple[str, ...]
    coverage: Coverage
    shares: tuple[LabelShare, ...]
    timeline: tuple[TimelineStep, ...]


def compute_report(store: Store, lecture_id: int, zone: Zone, step_s: int = DEFAULT_STEP_S) -> LectureReport:
    """Read a lecture and its windows from the store and compute its report.

    Raises:
        LectureNotFoundError: no lecture has the id.
        ConfigError: ``step_s`` is not a whole number from 1 to MAX_STEP_S, or gives more
            than MAX_TIMELINE_STEPS steps.
    """
    lecture = store.get_lecture(lecture_id)
    _check_step(lecture, step_s)
    windows = store.windows_in_room(lecture.room, lecture.start, lecture.end)
    return build_report(lecture, windows, zone, step_s)


def build_report(lecture: Lecture, windows: Sequence[StoredWindow], zone: Zone, step_s: int) -> LectureReport:
    """Compute the report of a lecture from the windows that belong to it."""
    _check_step(lecture, step_s)
    inside = [w for w in windows if w.room == lecture.room and lecture.start <= w.window_start < lecture.end]
    # A lecture without a single classified face still gets the seven FER2013 columns, so
    # that its CSV and JSON have the same shape as any other lecture's.
    labels = order_labels(label for w in inside if w.counts for label in w.counts) or tuple(FER2013_LABELS)
    total_counts = _sum_counts(inside)
    shares = sorted(
        _shares(labels, total_counts),
        key=lambda share: (-share.count, labels.index(share.label)),
    )
    return LectureReport(
        lecture=lecture,
        zone=zone,
        step_s=step_s,
        labels=labels,
        coverage=_coverage(lecture, inside),
        shares=tuple(shares),
        timeline=_timeline(lecture, inside, labels, step_s),
    )


def order_labels(labels: Iterable[str]) -> tuple[str, ...]:
    """Return the distinct labels: FER2013 labels in class order, then the others alphabetically."""
    distinct = set(labels)
    known = [label for label in FER2013_LABELS if label in distinct]
    others = sorted(distinct.difference(FER2013_LABELS))
    return tuple(known + others)


def check_step_s(step_s: object) -> int:
    """Return ``step_s`` if it is a whole number of seconds from 1 to MAX_STEP_S.

    Raises:
        ConfigError: ``step_s`` is not an int (a float, even a finite one, or a bool),
            or is out of range.
    """
    allowed = f"use a whole number from 1 to {MAX_STEP_S} seconds (366 days)"
    if isinstance(step_s, bool) or not isinstance(step_s, int):
        raise ConfigError(f"Invalid --step-s {step_s!r}: {allowed}")
    if not 1 <= step_s <= MAX_STEP_S:
        raise ConfigError(f"Invalid --step-s {step_s}: {allowed}")
    return step_s


def _check_step(lecture: Lecture, step_s: int) -> None:
    check_step_s(step_s)
    steps = math.ceil(lecture.duration_s / step_s)
    if steps > MAX_TIMELINE_STEPS:
        minimum_step_s = math.ceil(lecture.duration_s / MAX_TIMELINE_STEPS)
        raise ConfigError(
            f"--step-s {step_s} splits the {lecture.duration_s:.0f} s lecture into {steps} steps, "
            f"more than {MAX_TIMELINE_STEPS}: use at least {minimum_step_s}"
        )


def _coverage(lecture: Lecture, windows: Sequence[StoredWindow]) -> Coverage:
    by_device: dict[str, list[StoredWindow]] = {}
    for window in windows:
        by_device.setdefault(window.device_id, []).append(window)
    devices = tuple(
        _device_coverage(device_id, device_windows, lecture.duration_s)
        for device_id, device_windows in sorted(by_device.items())
    )
    return Coverage(
        devices=devices,
        windows_received=len(windows),
        windows_expected=sum(device.windows_expected for device in devices),
        suppressed_windows=sum(1 for w in windows if w.suppressed),
        frames_sampled=sum(w.frames_sampled for w in windows),
        face_detections=sum(w.faces_seen for w in windows),
        classified_faces=sum(_sum_counts(windows).values()),
    )


def _device_coverage(device_id: str, windows: Sequence[StoredWindow], lecture_s: float) -> DeviceCoverage:
    # Use the most common length (the shorter on a tie) because a restarted agent can send one short window.
    lengths = Counter(w.length_s for w in windows)
    window_s = min(lengths, key=lambda length: (-lengths[length], length))
    # At most ceil(L / w) windows of length w can start in a half-open interval of length L
    # without overlapping, so received exceeds expected only after an agent restarted
    # mid-window or changed its window length.
    expected = math.ceil(lecture_s / window_s)
    return DeviceCoverage(
        device_id=device_id,
        window_s=window_s,
        windows_received=len(windows),
        windows_expected=expected,
        suppressed_windows=sum(1 for w in windows if w.suppressed),
    )


def _timeline(
    lecture: Lecture, windows: Sequence[StoredWindow], labels: tuple[str, ...], step_s: int
) -> tuple[TimelineStep, ...]:
    step = timedelta(seconds=step_s)
    step_count = math.ceil(lecture.duration_s / step_s)
    windows_by_step: list[list[StoredWindow]] = [[] for _ in range(step_count)]
    for window in windows:
        windows_by_step[(window.window_start - lecture.start) // step].append(window)

    steps = []
    for index, step_windows in enumerate(windows_by_step):
        start = lecture.start + index * step
        steps.append(_timeline_step(start, min(start + step, lecture.end), step_windows, labels))
    return tuple(steps)


def _timeline_step(
    start: datetime, end: datetime, windows: Sequence[StoredWindow], labels: tuple[str, ...]
) -> TimelineStep:
    suppressed = sum(1 for w in windows if w.suppressed)
    counts = _sum_counts(windows)
    classified = sum(counts.values())
    if not windows:
        status = StepStatus.NO_DATA
    elif suppressed == len(windows):
        status = StepStatus.SUPPRESSED
    else:
        status = StepStatus.DATA
    shares = tuple(_shares(labels, counts)) if status is StepStatus.DATA else ()
    dominant = None
    if classified > 0:
        dominant = max(labels, key=lambda label: (counts.get(label, 0), -labels.index(label)))
    return TimelineStep(
        start=start,
        end=end,
        windows=len(windows),
        suppressed_windows=suppressed,
        face_detections=sum(w.faces_seen for w in windows),
        classified_faces=classified,
        shares=shares,
        dominant=dominant,
        status=status,
    )


def _sum_counts(windows: Iterable[StoredWindow]) -> Counter[str]:
    total: Counter[str] = Counter()
    for window in windows:
        if not window.suppressed and window.counts:
            total.update(window.counts)
    return total


def _shares(labels: tuple[str, ...], counts: Counter[str]) -> list[LabelShare]:
    classified = sum(counts.values())
    return [
        LabelShare(
            label=label,
            count=counts.get(label, 0),
            percent=100.0 * counts.get(label, 0) / classified if classified else 0.0,
        )
        for label in labels
    ]
