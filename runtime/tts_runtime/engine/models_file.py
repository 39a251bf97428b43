"""The models file and TTS_RUNTIME_MODELS_JSON: text -> validated `ModelSpec`s with names unique."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tts_contract import ModelSpec, worker_group_problem


class ModelsFileError(ValueError):
    """A models file or TTS_RUNTIME_MODELS_JSON that cannot be used; the message says what to fix."""


def parse_model_specs(data: Any, *, source: str = "models") -> list[ModelSpec]:
    """`{"models": [...]}` (or a bare list) -> specs, with names unique."""
    if isinstance(data, dict):
        unknown = set(data) - {"models"}
        if unknown:
            raise ModelsFileError(
                f"{source}: unknown top-level keys {sorted(unknown)}; expected only 'models'"
            )
        data = data.get("models")
    if not isinstance(data, list) or not data:
        raise ModelsFileError(
            f"{source}: expected {{'models': [ {{'name': ...}}, ... ]}} with at least one model"
        )
    specs: list[ModelSpec] = []
    for i, item in enumerate(data):
        if isinstance(item, str):
            item = {"name": item}
        try:
            specs.append(ModelSpec.model_validate(item))
        except ValidationError as e:
            errs = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<model>'}: {err['msg']}" for err in e.errors()
            )
            raise ModelsFileError(f"{source}: models[{i}]: {errs}") from None
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise ModelsFileError(f"{source}: model name {s.name!r} appears twice; names must be unique")
        seen.add(s.name)
    problem = worker_group_problem(specs)
    if problem is not None:
        raise ModelsFileError(f"{source}: {problem}")
    return specs


def load_model_specs(text_or_path: str | os.PathLike[str]) -> list[ModelSpec]:
    """Specs from a YAML/JSON models file path, or from YAML/JSON text (TTS_RUNTIME_MODELS_JSON)."""
    raw = os.fspath(text_or_path)
    source = "models"
    stripped = raw.strip()
    if stripped and stripped[0] not in "{[" and "\n" not in stripped:
        path = Path(stripped)
        if not path.exists():
            raise ModelsFileError(f"models file {stripped!r} does not exist")
        raw, source = path.read_text(encoding="utf-8"), stripped
    try:
        data = json.loads(raw) if raw.lstrip()[:1] in "{[" else yaml.safe_load(raw)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ModelsFileError(f"{source}: not valid JSON/YAML: {e}") from None
    return parse_model_specs(data, source=source)


def spec_from_cli(value: str) -> ModelSpec:
    """`name=module:factory` or `name` (hibari) from a command-line `--model` flag."""
    name, _, factory = value.partition("=")
    if factory:
        return parse_model_specs([{"name": name, "backend": "plugin", "factory": factory}], source="--model")[
            0
        ]
    return parse_model_specs([{"name": name}], source="--model")[0]
