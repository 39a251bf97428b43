"""ModelSpec and the models file / TTS_RUNTIME_MODELS_JSON parsers: accepted forms and clear errors."""

from __future__ import annotations

import json

import pytest

from tts_contract import ModelSpec
from tts_runtime.engine.models_file import ModelsFileError, load_model_specs, spec_from_cli


def test_json_text_with_camel_case_and_policy() -> None:
    text = json.dumps(
        {
            "models": [
                {"name": "hibari"},
                {
                    "name": "step-awq",
                    "variant": "awq",
                    "backend": "plugin",
                    "factory": "pkg.mod:make",
                    "loadTimeoutSeconds": 30,
                    "cpuMode": "exit-worker",
                    "policy": {"offloadAfterUse": False, "idleReleaseSeconds": 0, "priority": 3},
                },
            ]
        }
    )
    hib, awq = load_model_specs(text)
    assert hib.backend == "hibari" and hib.policy.offload_after_use is True
    assert awq.variant == "awq" and awq.load_timeout_seconds == 30 and awq.cpu_mode == "exit-worker"
    assert awq.policy.priority == 3 and awq.policy.idle_release_seconds == 0
    # Round trip: what the operator writes is what the runtime reads.
    assert load_model_specs(json.dumps({"models": [awq.to_json()]}))[0] == awq


def test_yaml_file(tmp_path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n  - name: tiny\n    backend: torch\n    factory: support.tiny:factory\n"
        "    options: {size_bytes: 1024}\n    load_timeout_seconds: 5\n"
    )
    [spec] = load_model_specs(str(path))
    assert spec.options == {"size_bytes": 1024} and spec.load_timeout_seconds == 5


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"models": []}, "at least one model"),
        ({"modelz": [{"name": "x"}]}, "unknown top-level keys"),
        ({"models": [{"name": "a"}, {"name": "a"}]}, "appears twice"),
        ({"models": [{"name": "bad name!"}]}, "models[0]: name"),
        ({"models": [{"name": "t", "backend": "torch"}]}, "needs factory"),
        ({"models": [{"name": "t", "backend": "plugin", "factory": "no-colon"}]}, "package.module:callable"),
        ({"models": [{"name": "t", "policy": {"priority": 5000}}]}, "policy.priority"),
        ({"models": [{"name": "t", "colour": "red"}]}, "colour"),
    ],
)
def test_errors_say_what_to_fix(doc: dict, needle: str) -> None:
    with pytest.raises(ModelsFileError) as err:
        load_model_specs(json.dumps(doc))
    assert needle in str(err.value)


def test_missing_file_and_bad_syntax() -> None:
    with pytest.raises(ModelsFileError, match="does not exist"):
        load_model_specs("/nonexistent/models.yaml")
    with pytest.raises(ModelsFileError, match="not valid JSON/YAML"):
        load_model_specs('{"models": [')


def test_command_line_form() -> None:
    assert spec_from_cli("hibari") == ModelSpec(name="hibari")
    s = spec_from_cli("mine=support.tiny:factory")
    assert s.backend == "plugin" and s.factory == "support.tiny:factory"
