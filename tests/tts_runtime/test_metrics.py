"""Prometheus metrics: residency read at scrape time, transitions and errors counted as they happen."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tts_contract import ModelReport, Policy, ResidencyReport, State, Verb
from tts_runtime.engine import Transition
from tts_runtime.server.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_state_and_bytes_follow_the_report_at_every_scrape() -> None:
    state = {"now": State.GPU}

    def report() -> ResidencyReport:
        vram = 1000 if state["now"] == State.GPU else 0
        line = ModelReport(
            name="m", state=state["now"], device="cpu", vram_bytes=vram, host_bytes=500, policy=Policy()
        )
        return ResidencyReport(models=[line])

    metrics = Metrics(report)
    first = samples(metrics)
    assert first[("residency_model_state", (("model", "m"), ("state", "gpu")))] == 1
    assert first[("residency_model_state", (("model", "m"), ("state", "cpu")))] == 0
    assert first[("residency_vram_bytes", (("model", "m"),))] == 1000
    state["now"] = State.CPU
    second = samples(metrics)
    assert second[("residency_model_state", (("model", "m"), ("state", "gpu")))] == 0
    assert second[("residency_model_state", (("model", "m"), ("state", "cpu")))] == 1
    assert second[("residency_vram_bytes", (("model", "m"),))] == 0
    assert second[("residency_host_bytes", (("model", "m"),))] == 500


def test_transitions_are_counted_and_timed_per_model_verb_outcome() -> None:
    metrics = Metrics(lambda: ResidencyReport(models=[]))
    metrics.on_transition(Transition("m", Verb.OFFLOAD, State.GPU, State.CPU, 0.2, True))
    metrics.on_transition(Transition("m", Verb.OFFLOAD, State.GPU, State.CPU, 0.4, True))
    metrics.on_transition(Transition("m", Verb.LOAD, State.UNLOADED, State.FAILED, 1.5, False, "boom"))
    got = samples(metrics)
    ok = (("model", "m"), ("outcome", "ok"), ("verb", "offload"))
    assert got[("residency_transitions_total", ok)] == 2
    assert got[("residency_transition_duration_seconds_count", ok)] == 2
    assert abs(got[("residency_transition_duration_seconds_sum", ok)] - 0.6) < 1e-9
    failed = (("model", "m"), ("outcome", "error"), ("verb", "load"))
    assert got[("residency_transitions_total", failed)] == 1


def test_each_app_has_its_own_registry() -> None:
    a = Metrics(lambda: ResidencyReport(models=[]))
    b = Metrics(lambda: ResidencyReport(models=[]))
    a.errors.labels("busy").inc()
    assert samples(a)[("residency_errors_total", (("kind", "busy"),))] == 1
    assert ("residency_errors_total", (("kind", "busy"),)) not in samples(b)
