"""The agent's pipeline: source -> face detection -> emotion classification -> windows -> outbox -> MQTT."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from edge_agent import sd_notify
from edge_agent.budget import (
    BudgetPart,
    BudgetPlan,
    PartMeter,
    check_budget,
    read_peak_rss_mib,
    read_rss_mib,
    static_parts,
)
from edge_agent.capture import ResilientSource
from edge_agent.classifier import EmotionClassifier
from edge_agent.config import AgentConfig
from edge_agent.errors import SourceError
from edge_agent.faces import FaceBox, FaceDetector, create_detector
from edge_agent.health import AgentCounters, HealthMonitor
from edge_agent.mqtt_topics import COMMAND_PAUSE, COUNTING_ACTIVE, COUNTING_PAUSED
from edge_agent.outbox import Outbox
from edge_agent.payload import WindowReport
from edge_agent.publisher import WindowPublisher
from edge_agent.stats import AgentStats
from edge_agent.window import WindowAggregator

log = logging.getLogger(__name__)

COUNTING_STATE_KEY = "counting"


@dataclass
class RunSummary:
    """Totals of one run, for the exit log line and for tests."""

    frames_sampled: int = 0
    faces_seen: int = 0
    windows_published: int = 0
    windows_acknowledged: int = 0
    windows_pending: int = 0
    windows_suppressed: int = 0
    windows_dropped: int = 0
    skipped_frames: int = 0
    invalid_frames: int = 0
    label_counts: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    stopped_by_request: bool = False
    broker_reached: bool = False
    source_error: str | None = None

    def add_window(self, report: WindowReport) -> None:
        self.windows_published += 1
        if report.suppressed:
            self.windows_suppressed += 1
        else:
            self.label_counts.update(report.counts or {})


class Agent:
    """One configured pipeline. Build it, then call ``run``; ``stop`` may be called from a signal handler.

    Construction checks the RAM budget, opens the outbox, loads the models, opens the
    source and starts the MQTT client, so every start-up error surfaces before the
    first frame, as an ``AgentError``. An unreachable broker is not a start-up error:
    windows wait in the outbox.
    """

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self._stop = threading.Event()
        self._requested_counting: str | None = None
        self.watchdog = sd_notify.Watchdog()
        self.health = HealthMonitor(config.device_id, config.budget_mib)
        self._windows_total = 0

        # Parts known from the config are checked before anything large is loaded.
        check_budget(BudgetPlan(tuple(static_parts(config)), config.budget_mib))
        self.outbox = Outbox(config.outbox.path, config.outbox.max_windows, config.outbox.when_full)
        try:
            self._build(config)
        except BaseException:
            self.outbox.close()
            raise
        sd_notify.notify("READY=1")
        log.info(
            "Agent %s in room %r started: %s, %s detector, model %s, %.1f s windows, min_faces %d, counting %s",
            config.device_id,
            config.room,
            self.source.description,
            config.detector.backend,
            config.classifier.model.name,
            config.window.length_s,
            config.window.min_faces,
            self.counting,
        )

    def _build(self, config: AgentConfig) -> None:
        self.counting = self.outbox.get_state(COUNTING_STATE_KEY) or COUNTING_ACTIVE
        self.source = ResilientSource(config.source, on_idle=self._idle, on_state=self._on_source_state)
        try:
            self._build_pipeline(config)
        except BaseException:
            self.source.close()
            raise

    def _build_pipeline(self, config: AgentConfig) -> None:
        self.budget = self._load_models(config)
        log.info("RAM budget: %s", self.budget.describe())
        check_budget(self.budget)
        self.windows = WindowAggregator(
            device_id=config.device_id,
            room=config.room,
            labels=self.classifier.labels,
            length_s=config.window.length_s,
            min_faces=config.window.min_faces,
        )
        self.publisher = WindowPublisher(
            config.mqtt,
            config.device_id,
            self.outbox,
            on_command=self._on_command,
            stats_source=self.make_stats,
        )
        self.publisher.start(self.counting)

    def _load_models(self, config: AgentConfig) -> BudgetPlan:
        """Load both models, run each once on a blank frame of the largest size, and measure what they take."""
        runtime_mib = read_rss_mib()
        # A video file's own frame size, when smaller than max_frame_px, spares the
        # detector the memory arenas of a larger frame that it would never see.
        width_px, height_px = self.source.largest_frame_px
        # Filled, not zeroed, so its pages are resident before the detector is measured.
        blank = np.full((height_px, width_px, 3), 128, dtype=np.uint8)

        meter = PartMeter()
        self.detector: FaceDetector = create_detector(config.detector)
        self.detector.detect(blank)
        detector_mib, detector_measured = meter.mib(), meter.peak_counter

        meter = PartMeter()
        self.classifier = EmotionClassifier(config.classifier.model, threads=config.classifier.threads)
        self.classifier.classify(blank, [FaceBox(0.0, 0.0, 64.0, 64.0, 1.0)])
        classifier_mib = meter.mib()
        del blank

        measured = [
            BudgetPart("runtime", runtime_mib, True, "install fewer Python packages in the agent's environment"),
            BudgetPart(
                f"{config.detector.backend} detector",
                detector_mib,
                detector_measured,
                f"raise [detector] min_face_px (now {config.detector.min_face_px}) or lower [source] width and height",
            ),
            BudgetPart(
                "emotion classifier", classifier_mib, meter.peak_counter, "use a smaller [classifier] model"
            ),
        ]
        return BudgetPlan((*measured, *static_parts(config)), config.budget_mib)

    @property
    def paused(self) -> bool:
        return self.counting == COUNTING_PAUSED

    def stop(self) -> None:
        """Request a clean stop: the open window is closed and sent or kept, then ``run`` returns."""
        self._stop.set()
        self.source.close()

    def run(self) -> RunSummary:
        """Process frames until the source ends or ``stop`` is called, then flush, deliver and disconnect."""
        summary = RunSummary()
        started = time.monotonic()
        try:
            for frame in self.source.frames():
                self.watchdog.ping()
                self._apply_command()
                if self._stop.is_set():
                    break
                if self.paused:
                    # No pixel is analysed during a pause; a window that ends meanwhile is closed.
                    self._enqueue_all(self.windows.close_before(frame.timestamp), summary)
                    continue
                began = time.perf_counter()
                boxes = self.detector.detect(frame.image)
                labels = self.classifier.classify(frame.image, boxes)
                self.health.record_frame((time.perf_counter() - began) * 1000, len(labels))
                summary.frames_sampled += 1
                summary.faces_seen += len(labels)
                self._enqueue_all(self.windows.add(frame.timestamp, labels), summary)
        except SourceError as error:
            summary.source_error = str(error)
            log.error("Source %s failed and [source] on_loss is stop: %s", self.source.description, error)
        finally:
            sd_notify.notify("STOPPING=1")
            self._enqueue_all(self.windows.flush(), summary)
            result = self.publisher.close()
            summary.windows_acknowledged = result.acknowledged
            summary.windows_pending = result.pending
            summary.broker_reached = self.publisher.ever_connected
            summary.windows_dropped = self.outbox.dropped_total
            summary.skipped_frames = self.source.skipped_frames
            summary.invalid_frames = self.source.invalid_frames
            summary.stopped_by_request = self._stop.is_set()
            summary.elapsed_s = time.monotonic() - started
            self.outbox.close()
        log.info(
            "Agent %s stopped: %d frames, %d faces, %d windows closed, %d acknowledged, %d left in the outbox, "
            "%d suppressed, %.1f s, peak RSS %.1f MiB of budget %d MiB",
            self.config.device_id,
            summary.frames_sampled,
            summary.faces_seen,
            summary.windows_published,
            summary.windows_acknowledged,
            summary.windows_pending,
            summary.windows_suppressed,
            summary.elapsed_s,
            read_peak_rss_mib(),
            self.config.budget_mib,
        )
        return summary

    def make_stats(self) -> AgentStats:
        """Return a stats snapshot; called by the publisher's delivery thread every stats interval."""
        counters = AgentCounters(
            counting=self.counting,
            source_state=self.source.state,
            skipped_frames_total=self.source.skipped_frames,
            invalid_frames_total=self.source.invalid_frames,
            outbox_depth=self.outbox.depth,
            outbox_dropped_total=self.outbox.dropped_total,
            windows_total=self._windows_total,
        )
        return self.health.snapshot(counters)

    def _enqueue_all(self, reports: list[WindowReport], summary: RunSummary) -> None:
        for report in reports:
            window_start = report.window_start.isoformat()
            self.outbox.add(window_start, report.to_json())
            self._windows_total += 1
            summary.add_window(report)
            log.info(
                "Window %s: %d frames, %d faces%s; outbox %d",
                window_start,
                report.frames_sampled,
                report.faces_seen,
                ", suppressed" if report.suppressed else "",
                self.outbox.depth,
            )
        if reports:
            self.publisher.wake()

    def _idle(self) -> None:
        """Keep the watchdog fed and commands applied while the source has no frame."""
        self.watchdog.ping()
        self._apply_command()

    def _on_command(self, command: str) -> None:
        # Runs on paho's network thread; the frame loop applies it between frames.
        self._requested_counting = COUNTING_PAUSED if command == COMMAND_PAUSE else COUNTING_ACTIVE

    def _apply_command(self) -> None:
        requested, self._requested_counting = self._requested_counting, None
        if requested is None or requested == self.counting:
            if requested is not None:
                self.publisher.publish_counting(self.counting)
            return
        self.counting = requested
        self.outbox.set_state(COUNTING_STATE_KEY, requested)
        self.publisher.publish_counting(requested)
        log.info("Counting %s by command", "paused" if requested == COUNTING_PAUSED else "resumed")

    def _on_source_state(self, state: str) -> None:
        log.info("Source %s is %s", self.config.source.uri, state)
