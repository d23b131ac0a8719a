"""Charts of the HTML reports, drawn with matplotlib's Agg backend as inline PNG data URIs.

matplotlib is imported only here and only when a chart is drawn, so the ingest and the
text reports run without it (install the ``reports`` extra for HTML).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

from aggregator.range_report import RangeReport
from aggregator.report import LectureReport, StepStatus

# One color per FER2013 label, in class order; other labels take the gray.
LABEL_COLORS = {
    "angry": "#d62728",
    "disgust": "#8c564b",
    "fear": "#9467bd",
    "happy": "#2ca02c",
    "sad": "#1f77b4",
    "surprise": "#ff7f0e",
    "neutral": "#bcbd22",
}
OTHER_COLOR = "#7f7f7f"
FIGURE_DPI = 96
TICK_STEPS = (1, 2, 5, 10, 15, 20, 30, 60, 120, 240)


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def _color(label: str) -> str:
    return LABEL_COLORS.get(label, OTHER_COLOR)


def _png(figure) -> str:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    # Fixed margins instead of bbox_inches="tight", which draws the figure a second time.
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    _pyplot().close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def shares_over_time(report: LectureReport) -> str:
    """Stacked areas of the label shares per timeline step; steps without shares stay empty."""
    pyplot = _pyplot()
    figure, axes = _figure(pyplot, 3.2)
    draw_shares(axes, report)
    axes.set_ylim(0, 100)
    axes.set_ylabel("% of classified faces")
    _time_ticks(axes, report)
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    return _png(figure)


def draw_shares(axes, report: LectureReport) -> None:  # type: ignore[no-untyped-def]
    """Fill one stacked step area per label; step i spans x from i to i + 1.

    Steps without shares get zero height in every layer, so they stay empty. A ``where``
    mask would not do: fill_between leaves out a masked-in step that has no masked-in
    neighbour to its right, which dropped the last step and every isolated one.
    """
    # One filled polygon per label: bars (one patch per step and label) took seconds for long lectures.
    edges = list(range(len(report.timeline) + 1))
    bottoms = [0.0] * len(edges)
    for index, label in enumerate(report.labels):
        heights = _repeat_last(
            [step.shares[index].percent if step.status is StepStatus.DATA else 0.0 for step in report.timeline]
        )
        tops = [bottom + height for bottom, height in zip(bottoms, heights, strict=True)]
        axes.fill_between(edges, bottoms, tops, step="post", color=_color(label), label=label, linewidth=0)
        bottoms = tops


def distribution(labels: Sequence[str], percents: Sequence[float], counts: Sequence[int]) -> str:
    """Horizontal bars of the overall share of each label, largest on top."""
    pyplot = _pyplot()
    order = sorted(range(len(labels)), key=lambda index: percents[index])
    figure, axes = pyplot.subplots(figsize=(6, 0.35 * max(len(labels), 3) + 0.6))
    figure.subplots_adjust(left=0.18, right=0.97, bottom=0.2, top=0.95)
    axes.barh(
        [labels[index] for index in order],
        [percents[index] for index in order],
        color=[_color(labels[index]) for index in order],
    )
    for row, index in enumerate(order):
        axes.text(percents[index] + 1, row, f"{percents[index]:.1f} % ({counts[index]})", va="center", fontsize="small")
    axes.set_xlim(0, 115)
    axes.set_xlabel("% of classified faces")
    return _png(figure)


def coverage(report: LectureReport) -> str:
    """Windows per step: with shares, suppressed (hatched), and the windows expected as a line."""
    pyplot = _pyplot()
    figure, axes = _figure(pyplot, 2.4)
    edges = list(range(len(report.timeline) + 1))
    usable = _repeat_last([step.windows - step.suppressed_windows for step in report.timeline])
    received = _repeat_last([step.windows for step in report.timeline])
    axes.fill_between(edges, 0, usable, step="post", color="#4c72b0", linewidth=0, label="windows with shares")
    axes.fill_between(
        edges, usable, received, step="post", facecolor="#dddddd", hatch="//", edgecolor="#888888",
        linewidth=0, label="suppressed windows",
    )
    expected = _repeat_last(_expected_per_step(report))
    axes.step(edges, expected, where="post", color="black", linewidth=1, label="windows expected")
    axes.set_ylabel("windows")
    axes.set_ylim(0, max([*expected, *received, 1]) * 1.15)
    _time_ticks(axes, report)
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    return _png(figure)


def trend(report: RangeReport) -> str:
    """Stacked bars of the label shares per lecture, in time order; lectures without faces stay empty."""
    pyplot = _pyplot()
    figure, axes = _figure(pyplot, 3.2)
    positions = range(len(report.lectures))
    bottoms = [0.0] * len(report.lectures)
    for index, label in enumerate(report.labels):
        heights = [summary.shares[index].percent for summary in report.lectures]
        axes.bar(positions, heights, bottom=bottoms, width=0.8, color=_color(label), label=label)
        bottoms = [bottom + height for bottom, height in zip(bottoms, heights, strict=True)]
    zone = report.zone.tzinfo
    names = [f"{summary.lecture.start.astimezone(zone):%m-%d}" for summary in report.lectures]
    step = max(1, len(names) // 12)
    axes.set_xticks(list(positions)[::step], names[::step], fontsize="small")
    axes.set_ylim(0, 100)
    axes.set_ylabel("% of classified faces")
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    return _png(figure)


def _figure(pyplot, height_in: float):  # type: ignore[no-untyped-def]
    figure, axes = pyplot.subplots(figsize=(9, height_in))
    # The right margin leaves room for the legend outside the axes.
    figure.subplots_adjust(left=0.08, right=0.80, bottom=0.14, top=0.95)
    return figure, axes


def _repeat_last(values: list) -> list:  # type: ignore[type-arg]
    # A step plot with N steps needs N + 1 edges; the last edge repeats the last value.
    return [*values, values[-1]] if values else [0]


def _expected_per_step(report: LectureReport) -> list[float]:
    expected = []
    for step in report.timeline:
        step_s = (step.end - step.start).total_seconds()
        expected.append(sum(step_s / device.window_s for device in report.coverage.devices))
    return expected


def _time_ticks(axes, report: LectureReport) -> None:  # type: ignore[no-untyped-def]
    zone = report.zone.tzinfo
    starts = [step.start.astimezone(zone) for step in report.timeline]
    clock = "%H:%M:%S" if any(start.second for start in starts) else "%H:%M"
    names = [start.strftime(clock) for start in starts]
    # At most about ten ticks, a round number of steps apart (with 60 s steps: 5, 10, 15 min ...).
    step = next((count for count in TICK_STEPS if len(names) / count <= 10), max(1, len(names) // 10))
    axes.set_xticks(list(range(len(names)))[::step], names[::step], fontsize="small")
    axes.set_xlim(0, max(len(names), 1))
