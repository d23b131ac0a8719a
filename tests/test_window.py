from datetime import UTC, datetime, timedelta

from edge_agent.window import WindowAggregator

LABELS = ("angry", "happy", "sad")
T0 = datetime(2026, 3, 2, 8, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_windows_align_to_epoch_multiples():
    windows = WindowAggregator("pi", "101", LABELS, length_s=10, min_faces=1)
    assert windows.add(at(3.5), [1]) == []
    finished = windows.add(at(12), [2])
    assert len(finished) == 1
    assert finished[0].window_start == T0
    assert finished[0].window_end == at(10)
    assert finished[0].counts == {"angry": 0, "happy": 1, "sad": 0}


def test_counts_and_totals_add_up():
    windows = WindowAggregator("pi", "101", LABELS, length_s=10, min_faces=1)
    for second, labels in [(0, [1, 1, 2]), (1, [0]), (2, [1, 2])]:
        windows.add(at(second), labels)
    (report,) = windows.flush()
    assert report.frames_sampled == 3
    assert report.faces_seen == 6
    assert report.counts == {"angry": 1, "happy": 3, "sad": 2}
    assert windows.flush() == []


def test_small_group_is_suppressed():
    windows = WindowAggregator("pi", "101", LABELS, length_s=10, min_faces=3)
    windows.add(at(0), [1, 1])
    windows.add(at(1), [1, 1])
    windows.add(at(2), [1, 1, 1, 1, 1])
    (report,) = windows.flush()
    assert report.suppressed is True
    assert report.counts is None
    assert report.faces_seen == 9


def test_median_group_at_threshold_is_published():
    windows = WindowAggregator("pi", "101", LABELS, length_s=10, min_faces=3)
    windows.add(at(0), [0, 1, 2])
    windows.add(at(1), [0, 1, 2])
    windows.add(at(2), [])
    (report,) = windows.flush()
    assert report.suppressed is False
    assert report.counts == {"angry": 2, "happy": 2, "sad": 2}


def test_frames_without_faces_suppress_the_window():
    windows = WindowAggregator("pi", "101", LABELS, length_s=10, min_faces=1)
    windows.add(at(0), [])
    (report,) = windows.flush()
    assert report.suppressed is True
    assert report.frames_sampled == 1


def test_gap_emits_no_empty_windows():
    windows = WindowAggregator("pi", "101", LABELS, length_s=10, min_faces=1)
    windows.add(at(1), [1])
    finished = windows.add(at(45), [1])
    assert [report.window_start for report in finished] == [T0]
    (last,) = windows.flush()
    assert last.window_start == at(40)
