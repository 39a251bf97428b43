"""Spec parsing: defaults, and every bad field named with what to fix."""

from __future__ import annotations

import pytest

from tts_operator.spec import InvalidSpecError, parse_spec


def test_defaults() -> None:
    spec = parse_spec({"model": {"name": "hibari"}})
    assert spec.replicas == 1 and spec.port == 8000 and spec.gpu.count == 1
    assert spec.gpu.resource_name == "nvidia.com/gpu" and spec.residency.offload_after_use


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, "spec.model: Field required"),
        ({"model": {"name": "x"}, "replicas": -1}, "spec.replicas"),
        ({"model": {"name": "x", "backend": "plugin"}}, "backend 'plugin' needs factory"),
        ({"model": {"name": "x", "backend": "onnx"}}, "spec.model.backend"),
        ({"model": {"name": "x", "source": {}}}, "exactly one of model.source.uri or model.source.pvc"),
        ({"model": {"name": "x"}, "port": 70000}, "spec.port"),
        (
            {"model": {"name": "x"}, "env": [{"name": "TTS_RUNTIME_MODELS_JSON", "value": "{}"}]},
            "set by the operator",
        ),
        (
            {
                "model": {"name": "x"},
                "residency": {"offloadAfterUse": False, "idleOffloadSeconds": 100, "idleReleaseSeconds": 10},
            },
            "idleReleaseSeconds must be 0",
        ),
        ({"model": {"name": "x"}, "bogus": 1}, "spec.bogus"),
    ],
)
def test_bad_specs_say_what_to_fix(raw: dict[str, object], expected: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        parse_spec(raw)
    assert expected in str(info.value)


def test_long_names_are_refused() -> None:
    with pytest.raises(InvalidSpecError, match=r"metadata\.name"):
        parse_spec({"model": {"name": "x"}}, "n" * 58)
