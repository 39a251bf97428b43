"""The agent's orchestration: follow the runtime and the pod, then publish, apply policy, serve offloads."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tts_contract import Policy
from tts_contract import annotations as ann
from tts_operator.agent.plan import models_needing_policy, offload_targets, policy_body
from tts_operator.agent.pod_client import PodClient, annotations_of
from tts_operator.agent.publish import Coalescer, changes
from tts_operator.agent.retry import Retry
from tts_operator.agent.runtime_client import (
    EventsUnsupported,
    RuntimeClient,
    RuntimeRefused,
    RuntimeUnavailable,
)
from tts_operator.kube import KubeApiError

log = logging.getLogger("tts_operator.agent")


@dataclass(frozen=True)
class Timing:
    min_publish_interval: float = 1.0
    poll_seconds: float = 1.0  # polling period without the event stream
    resync_seconds: float = 5.0  # a full read even with the stream (leases and lastUsed are not events)
    readiness_grace: float = 3.0  # no policy annotation after this long: ready without one
    tick: float = 0.5  # the longest the loop sleeps when nothing wakes it


def _residency_annotation(report: Mapping[str, Any]) -> str:
    """The `tts.residency.dev/residency` value: the runtime's report and when it was published."""
    body = {**report, "updated": ann.now().isoformat().replace("+00:00", "Z")}
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def _level(err: KubeApiError) -> int:
    """Every API failure is retried; one that will not pass by itself (e.g. RBAC refuses) is an ERROR."""
    return logging.WARNING if err.temporary else logging.ERROR


class Agent:
    """Level-based: every pass compares what the runtime reports with what the pod asks for and acts."""

    def __init__(
        self,
        runtime: RuntimeClient,
        pod: PodClient,
        timing: Timing,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runtime = runtime
        self.pod = pod
        self.timing = timing
        self._clock = clock
        self.stop = threading.Event()
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._started = clock()
        self._report: dict[str, Any] | None = None
        self._report_at = float("-inf")
        self._runtime_ok = False
        self._streaming = False
        self._annotations: dict[str, str] = {}
        self._pod_seen = False
        self._pod_known = False  # whether _pod_seen comes from the API yet
        self._policy_synced = False
        self._served_request: str | None = None
        self._gpu_share: Any = None
        self._bad_annotations: dict[str, str] = {}
        self._coalescer = Coalescer(timing.min_publish_interval, clock)
        self._read = Retry(f"reading the runtime at {runtime.base_url}", clock)
        self._publish = Retry(f"publishing {ann.RESIDENCY} on pod {pod.ref}", clock)
        self._policy = Retry(f"applying {ann.POLICY} to the runtime", clock)
        self._offload = Retry(f"serving {ann.OFFLOAD_REQUEST}", clock)
        self._watch = Retry(f"watching pod {pod.ref}", clock)

    # ---- threads feeding the state -------------------------------------------------------------

    def _set_report(self, report: dict[str, Any]) -> None:
        with self._lock:
            self._report, self._report_at, self._runtime_ok = report, self._clock(), True
        self._read.ok()
        self.wake.set()

    def _set_pod(self, pod: dict[str, Any] | None) -> None:
        seen = pod is not None
        if seen != self._pod_seen or not self._pod_known:
            if seen:
                log.info("pod %s found", self.pod.ref)
            else:
                log.warning("pod %s not found (not created yet, or deleted); waiting for it", self.pod.ref)
        with self._lock:
            self._annotations = annotations_of(pod)
            self._pod_seen, self._pod_known = seen, True
        self.wake.set()

    def follow_runtime(self) -> None:
        """Thread: follow the event stream; fall back to the loop's polling when there is none."""
        # Reconnects sooner than other retries (cap 10 s): the stream is how changes reach the pod quickly.
        # Failures log at DEBUG: reading the runtime (`_read`) already says when it is unreachable.
        stream = Retry(f"following {self.runtime.base_url}/v1/residency/events", self._clock, cap=10.0)
        while not self.stop.is_set():
            ended: Exception = RuntimeUnavailable("the runtime closed the event stream")
            try:
                for report in self.runtime.events(self.stop):
                    if report is None:  # (re)connected: read the full state now, the stream sends deltas
                        self._streaming = True
                        self._report_at = float("-inf")
                        self.wake.set()
                        stream.ok()
                    else:
                        self._set_report(report)
            except EventsUnsupported:
                log.info("the runtime has no event stream; polling every %.1fs", self.timing.poll_seconds)
                self._streaming = False
                self.stop.wait(300.0)  # a runtime upgrade may add it; no need to ask often
                continue
            except RuntimeUnavailable as err:
                ended = err
            self._streaming = False
            self.stop.wait(stream.failed(ended, logging.DEBUG))

    def follow_pod(self) -> None:
        """Thread: list+watch the pod, re-list after every end or error of the watch."""
        while not self.stop.is_set():
            try:
                for pod in self.pod.watch(self.stop):
                    self._set_pod(pod)
                    self._watch.ok()
            except KubeApiError as err:
                self.stop.wait(self._watch.failed(err, _level(err)))

    # ---- one pass of the loop ----------------------------------------------------------------------

    def step(self) -> None:
        self._refresh_report()
        self._sync_policy()
        self._serve_offload_request()
        self._publish_residency()
        self._note_gpu_share()

    def _refresh_report(self, force: bool = False) -> None:
        period = self.timing.resync_seconds if self._streaming else self.timing.poll_seconds
        if not force and (self._clock() - self._report_at < period or not self._read.ready()):
            return
        try:
            self._set_report(self.runtime.report())
        except (RuntimeUnavailable, RuntimeRefused) as err:
            with self._lock:
                self._runtime_ok = False
            self._read.failed(err)

    def _annotation(self, key: str, model: Any) -> tuple[str | None, Any]:
        """The raw annotation and its parsed value; a malformed one is logged once and parsed as None."""
        raw = self._annotations.get(key)
        value = ann.parse(model, raw)
        if raw is not None and value is None and self._bad_annotations.get(key) != raw:
            log.error(
                "annotation %s on pod %s is not a valid %s: %.200s", key, self.pod.ref, model.__name__, raw
            )
            self._bad_annotations[key] = raw
        return raw, value

    def _sync_policy(self) -> None:
        _, desired = self._annotation(ann.POLICY, Policy)
        report = self._report
        if desired is None or report is None or not self._runtime_ok:
            return
        models = models_needing_policy(desired, report)
        if not models:
            if not self._policy_synced:
                log.info("runtime policy matches %s", ann.POLICY)
            self._policy_synced = True
            return
        if not self._policy.ready():
            return
        try:
            for model in models:
                self.runtime.set_policy(model, policy_body(desired))
            self._refresh_report(force=True)
        except (RuntimeUnavailable, RuntimeRefused) as err:
            self._policy.failed(err, logging.ERROR if isinstance(err, RuntimeRefused) else logging.WARNING)
            return
        if self._report is not None and models_needing_policy(desired, self._report):
            # Accepted but not reported back as set: back off rather than PUT in a tight loop.
            self._policy.failed(RuntimeError("the runtime accepted the policy but reports a different one"))
            return
        log.info(
            "applied policy %s to %s", json.dumps(policy_body(desired), sort_keys=True), ", ".join(models)
        )
        self._policy.ok()
        self._policy_synced = True

    def _serve_offload_request(self) -> None:
        raw, request = self._annotation(ann.OFFLOAD_REQUEST, ann.OffloadRequestValue)
        if raw is None or not self._offload.ready():
            return
        if request is not None and request.id != self._served_request:
            if self._report is None or not self._runtime_ok:
                return
            targets = offload_targets(request, self._report)
            for model in targets:
                try:
                    self.runtime.verb(model, request.verb)
                except RuntimeRefused as err:  # e.g. 409: leased or moved on meanwhile; nothing to free
                    log.info("offload request %s: %s %s skipped: %s", request.id, request.verb, model, err)
                except RuntimeUnavailable as err:
                    self._offload.failed(err)
                    return
            self._served_request = request.id
            log.info(
                "offload request %s from %s: %s on %s",
                request.id,
                request.requested_by or "?",
                request.verb,
                ", ".join(targets) or "no idle model on the GPU",
            )
            self._refresh_report(force=True)
        # Removing the annotation is the acknowledgement (also for a malformed one: it can never be served).
        # The report after the verbs goes in the same patch: the operator never sees the request gone while
        # the report still shows the models on the GPU (it would have to guess whether they are leaving).
        report = self._report if self._runtime_ok else None
        patch: dict[str, str | None] = {ann.OFFLOAD_REQUEST: None}
        if report is not None:
            patch[ann.RESIDENCY] = _residency_annotation(report)
        try:
            pod = self.pod.patch_annotations(patch)
        except KubeApiError as err:
            self._offload.failed(err, _level(err))
            return
        if report is not None:
            self._coalescer.published(report)
        self._set_pod(pod)
        self._offload.ok()

    def _publish_residency(self) -> None:
        report = self._report
        if report is None:
            return
        if self._pod_seen and ann.RESIDENCY not in self._annotations:
            self._coalescer.forget()  # removed by someone, or a new pod under the same name
        self._coalescer.offer(report)
        value = self._coalescer.due() if self._publish.ready() else None
        if value is None:
            return
        try:
            pod = self.pod.patch_annotations({ann.RESIDENCY: _residency_annotation(value)})
        except KubeApiError as err:
            self._coalescer.failed(self._publish.failed(err, _level(err)))
            return
        log.debug("published residency: %s", "; ".join(changes(self._coalescer.last_published, value)))
        self._coalescer.published(value)
        self._publish.ok()
        self._set_pod(pod)

    def _note_gpu_share(self) -> None:
        _, share = self._annotation(ann.GPU_SHARE, ann.GpuShareValue)
        data = share.model_dump(mode="json", by_alias=True) if share is not None else None
        if data != self._gpu_share:
            log.info("gpu-share: %s", json.dumps(data, sort_keys=True))
            self._gpu_share = data

    # ---- probes and the main loop -----------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        if not self._runtime_ok:
            return False, f"runtime at {self.runtime.base_url} not answering"
        if self._policy_synced:
            return True, "policy in sync"
        if (
            ann.POLICY not in self._annotations
            and self._clock() - self._started >= self.timing.readiness_grace
        ):
            return True, "no policy annotation"
        return False, "policy not applied yet"

    def snapshot(self) -> dict[str, Any]:
        published = self._coalescer.last_published
        return {
            "pod": self.pod.ref,
            "podSeen": self._pod_seen,
            "runtime": {
                "url": self.runtime.base_url,
                "reachable": self._runtime_ok,
                "events": self._streaming,
            },
            "policySynced": self._policy_synced,
            "published": published is not None,
            "lastOffloadRequest": self._served_request,
            "gpuShare": self._gpu_share,
            "errors": {
                r.what: r.error
                for r in (self._read, self._publish, self._policy, self._offload, self._watch)
                if r.error
            },
        }

    def run(self) -> None:
        threads = [
            threading.Thread(target=self.follow_runtime, name="runtime-events", daemon=True),
            threading.Thread(target=self.follow_pod, name="pod-watch", daemon=True),
        ]
        for thread in threads:
            thread.start()
        log.info("agent for pod %s following the runtime at %s", self.pod.ref, self.runtime.base_url)
        while not self.stop.is_set():
            try:
                self.step()
            except Exception:  # a bug in one pass must not end the sidecar; the next pass retries
                log.exception("agent pass failed")
            wait = self._coalescer.wait_time()
            self.wake.wait(self.timing.tick if wait is None else min(self.timing.tick, max(wait, 0.01)))
            self.wake.clear()
        log.info("agent stopped")
