"""Prometheus metrics of one app: residency read at scrape time, transitions and requests as they happen."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tts_contract import ResidencyReport, State

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# `*_created` series double every counter and histogram for a timestamp nobody graphs.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Transitions span sub-second offloads to minute-long cold loads.
_TRANSITION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _ResidencyCollector(Collector):
    """Reads the engine's report on every scrape, so state and bytes are never stale."""

    def __init__(self, report: Callable[[], ResidencyReport]) -> None:
        self._report = report

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = GaugeMetricFamily(
            "residency_model_state",
            "1 for the state each model is in, 0 for the others",
            labels=["model", "state"],
        )
        vram = GaugeMetricFamily("residency_vram_bytes", "GPU memory held by each model", labels=["model"])
        host = GaugeMetricFamily("residency_host_bytes", "host memory held by each model", labels=["model"])
        leases = GaugeMetricFamily(
            "residency_leases", "requests holding each model right now", labels=["model"]
        )
        report = self._report()
        for model in report.models:
            for candidate in State:
                state.add_metric([model.name, candidate.value], 1.0 if model.state == candidate else 0.0)
            vram.add_metric([model.name], float(model.vram_bytes))
            host.add_metric([model.name], float(model.host_bytes))
            leases.add_metric([model.name], float(model.leases))
        yield from (state, vram, host, leases)
        if report.gpu is not None:
            gpu = GaugeMetricFamily("residency_gpu_bytes", "GPU memory per NVML", labels=["gpu", "kind"])
            gpu.add_metric([report.gpu.uuid, "total"], float(report.gpu.total_bytes))
            gpu.add_metric([report.gpu.uuid, "free"], float(report.gpu.free_bytes))
            gpu.add_metric([report.gpu.uuid, "process"], float(report.gpu.process_bytes))
            yield gpu


class Metrics:
    """One registry per app: tests build many apps in one process."""

    def __init__(self, report: Callable[[], ResidencyReport]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_ResidencyCollector(report))
        self.transitions = Counter(
            "residency_transitions_total",
            "residency verbs performed",
            ["model", "verb", "outcome"],
            registry=self.registry,
        )
        self.transition_seconds = Histogram(
            "residency_transition_duration_seconds",
            "time each residency verb took",
            ["model", "verb", "outcome"],
            buckets=_TRANSITION_BUCKETS,
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "residency_request_duration_seconds",
            "speech request latency, admission to last byte encoded",
            ["model", "format", "status"],
            buckets=_REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.first_audio_seconds = Histogram(
            "residency_speech_first_audio_seconds",
            "streamed speech: admission to the first audio encoded",
            ["model", "format"],
            buckets=_REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.speech_streams = Counter(
            "residency_speech_streams_total",
            "streamed speech responses by how they ended (completed, cancelled by the client, error); "
            "counted once the lease is closed and the model stopped",
            ["model", "format", "outcome"],
            registry=self.registry,
        )
        self.speech_segments = Counter(
            "residency_speech_segments_total",
            "pieces of audio the model synthesized for streamed responses",
            ["model"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "residency_queue_depth", "speech requests admitted (running + waiting)", registry=self.registry
        )
        self.errors = Counter(
            "residency_errors_total", "error answers by kind", ["kind"], registry=self.registry
        )

    def on_transition(self, transition: Any) -> None:
        """Engine subscriber: called from any thread after every verb."""
        labels = (
            str(transition.model),
            _text(transition.verb),
            "ok" if transition.ok else "error",
        )
        self.transitions.labels(*labels).inc()
        self.transition_seconds.labels(*labels).observe(max(0.0, float(transition.seconds)))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _text(value: Any) -> str:
    return str(getattr(value, "value", value))
