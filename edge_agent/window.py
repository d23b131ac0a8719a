"""Aggregation of per-frame emotion labels into fixed time windows.

Windows are aligned to multiples of their length since the Unix epoch, so the windows
of all devices in a school start at the same instants and a report can line them up.
Only counts leave this module: per-frame label lists are added up and dropped.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from edge_agent.payload import WindowReport


@dataclass
class _OpenWindow:
    start: datetime
    end: datetime
    faces_per_frame: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)


class WindowAggregator:
    """Count classified faces per window and emit a ``WindowReport`` when a window ends.

    A window with frames but fewer than ``min_faces`` faces per frame (median over its
    frames) is emitted as suppressed, without counts. Windows in which no frame was
    sampled are not emitted; the aggregator reports them as gaps.
    """

    def __init__(
        self, device_id: str, room: str, labels: Sequence[str], length_s: float, min_faces: int
    ) -> None:
        self.device_id = device_id
        self.room = room
        self.labels = tuple(labels)
        self.length_s = length_s
        self.min_faces = min_faces
        self._open: _OpenWindow | None = None

    def _window_bounds(self, timestamp: datetime) -> tuple[datetime, datetime]:
        epoch_s = timestamp.timestamp()
        start_s = (epoch_s // self.length_s) * self.length_s
        start = datetime.fromtimestamp(start_s, UTC)
        return start, start + timedelta(seconds=self.length_s)

    def add(self, timestamp: datetime, label_indices: Sequence[int]) -> list[WindowReport]:
        """Add one sampled frame's labels (one per face); return the windows this frame closed.

        Frames must arrive in time order. A frame older than the open window is counted
        in the open window rather than reopening a closed one.
        """
        finished: list[WindowReport] = []
        if self._open is None or timestamp >= self._open.end:
            if self._open is not None:
                finished.append(self._close(self._open))
            start, end = self._window_bounds(timestamp)
            self._open = _OpenWindow(start, end, counts=[0] * len(self.labels))

        window = self._open
        window.faces_per_frame.append(len(label_indices))
        for index in label_indices:
            window.counts[index] += 1
        return finished

    def close_before(self, timestamp: datetime) -> list[WindowReport]:
        """Close the open window if it ended at or before ``timestamp``, without adding a frame.

        While counting is paused no frame is added, and this keeps a window from staying
        open for the whole pause.
        """
        if self._open is None or timestamp < self._open.end:
            return []
        return self.flush()

    def flush(self) -> list[WindowReport]:
        """Close the open window, for example at the end of a video or at shutdown."""
        if self._open is None:
            return []
        report = self._close(self._open)
        self._open = None
        return [report]

    def _close(self, window: _OpenWindow) -> WindowReport:
        faces_seen = sum(window.faces_per_frame)
        suppressed = statistics.median(window.faces_per_frame) < self.min_faces
        counts = None if suppressed else dict(zip(self.labels, window.counts, strict=True))
        return WindowReport(
            device_id=self.device_id,
            room=self.room,
            window_start=window.start,
            window_end=window.end,
            frames_sampled=len(window.faces_per_frame),
            faces_seen=faces_seen,
            min_faces=self.min_faces,
            suppressed=suppressed,
            counts=counts,
        )
