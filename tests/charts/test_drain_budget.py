"""One drain budget, agreed by the chart, the operator and the runtime: the pod's grace period is past it."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest
from chartlib import objects, one, render

from tts_operator.builders import Images, Owner, build_deployment
from tts_operator.settings import OperatorSettings
from tts_operator.spec import parse_spec
from tts_runtime.settings import Settings


def _owner() -> Owner:
    spec = parse_spec({"model": {"name": "hibari"}}, "voice")
    return Owner(name="voice", namespace="tts", uid="u", spec=spec)


@pytest.mark.parametrize("values", [{}, {"runtime": {"drainSeconds": 12.5}}])
def test_the_chart_operator_and_runtime_agree_on_the_drain(
    chart: helm.Chart, values: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    operator = one(objects(render(chart, values)), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in operator["env"]}
    drain = env["RESIDENCY_RUNTIME_DRAIN_SECONDS"]
    assert float(drain) == values.get("runtime", {}).get("drainSeconds", 30)

    monkeypatch.setenv("RESIDENCY_RUNTIME_DRAIN_SECONDS", drain)  # what the operator pod sees
    read = OperatorSettings()  # what the operator reads at start
    images = Images(
        runtime=read.runtime_image, agent=read.agent_image, drain_seconds=read.runtime_drain_seconds
    )
    pod = build_deployment(_owner(), images)["spec"]["template"]["spec"]
    runtime = next(c for c in pod["containers"] if c["name"] == "runtime")
    runtime_env = {e["name"]: e.get("value") for e in runtime["env"]}
    settings = Settings(drain_timeout_seconds=runtime_env["TTS_RUNTIME_DRAIN_TIMEOUT_SECONDS"])
    assert settings.drain_timeout_seconds == float(drain)
    # The runtime exits within its drain plus seconds (tests/tts_runtime/test_faults_shutdown.py); the
    # kubelet's SIGKILL must come later than that.
    assert pod["terminationGracePeriodSeconds"] >= settings.drain_timeout_seconds + 10
