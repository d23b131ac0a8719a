"""The agent's pipeline: source -> face detection -> emotion classification -> windows -> MQTT."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from edge_agent.capture import FrameSource, open_source
from edge_agent.classifier import EmotionClassifier
from edge_agent.config import AgentConfig
from edge_agent.faces import FaceDetector, create_detector
from edge_agent.payload import WindowReport
from edge_agent.publisher import WindowPublisher
from edge_agent.window import WindowAggregator

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """Totals of one run, for the exit log line and for tests."""

    frames_sampled: int = 0
    faces_seen: int = 0
    windows_published: int = 0
    windows_acknowledged: int = 0
    windows_suppressed: int = 0
    label_counts: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0

    def add_window(self, report: WindowReport) -> None:
        self.windows_published += 1
        if report.suppressed:
            self.windows_suppressed += 1
        else:
            self.label_counts.update(report.counts or {})


class Agent:
    """One configured pipeline. Build it, then call ``run``; ``stop`` may be called from a signal handler.

    Construction loads the models and opens the source and the broker connection, so
    every start-up error surfaces before the first frame, as an ``AgentError``.
    """

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self._stop = threading.Event()
        self.classifier = EmotionClassifier(config.classifier.model, threads=config.classifier.threads)
        self.detector: FaceDetector = create_detector(config.detector)
        self.source: FrameSource = open_source(config.source)
        self.windows = WindowAggregator(
            device_id=config.device_id,
            room=config.room,
            labels=self.classifier.labels,
            length_s=config.window.length_s,
            min_faces=config.window.min_faces,
        )
        self.publisher = WindowPublisher(config.mqtt, config.device_id)
        try:
            self.publisher.connect()
        except BaseException:
            self.source.close()
            raise
        log.info(
            "Agent %s in room %r started: %s, %s detector, model %s, %.1f s windows, min_faces %d",
            config.device_id,
            config.room,
            self.source.description,
            config.detector.backend,
            config.classifier.model.name,
            config.window.length_s,
            config.window.min_faces,
        )

    def stop(self) -> None:
        self._stop.set()
        self.source.close()

    def run(self) -> RunSummary:
        """Process frames until the source ends or ``stop`` is called, then flush and disconnect."""
        summary = RunSummary()
        started = time.monotonic()
        try:
            for frame in self.source.frames():
                if self._stop.is_set():
                    break
                boxes = self.detector.detect(frame.image)
                labels = self.classifier.classify(frame.image, boxes)
                summary.frames_sampled += 1
                summary.faces_seen += len(labels)
                for report in self.windows.add(frame.timestamp, labels):
                    self._publish(report, summary)
        finally:
            for report in self.windows.flush():
                self._publish(report, summary)
            result = self.publisher.close()
            summary.windows_acknowledged = result.acknowledged
            summary.elapsed_s = time.monotonic() - started
        log.info(
            "Agent %s stopped: %d frames, %d faces, %d windows published, %d acknowledged, %d suppressed, %.1f s",
            self.config.device_id,
            summary.frames_sampled,
            summary.faces_seen,
            summary.windows_published,
            summary.windows_acknowledged,
            summary.windows_suppressed,
            summary.elapsed_s,
        )
        return summary

    def _publish(self, report: WindowReport, summary: RunSummary) -> None:
        self.publisher.publish(report)
        summary.add_window(report)
