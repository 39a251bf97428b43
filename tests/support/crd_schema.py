"""What an API server does to a custom resource with its CRD's schema: default, prune, validate (422).

`admit(schema, obj, strict=False)` is what the emulator runs on every write of a custom resource;
`violations(crd, obj)` is the same check offline (what `kubectl apply`, strict field validation by default,
would be refused for), for the chart's examples.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from typing import Any

import celpy
import jsonschema
from celpy.adapter import json_to_cel

Json = dict[str, Any]
# apiVersion, kind and metadata are the API server's own business, whatever the CRD says about them.
_SERVER_FIELDS = ("apiVersion", "kind", "metadata")


@dataclass(frozen=True)
class Cause:
    """One entry of a 422 Status's `details.causes`, as the API server words it."""

    reason: str  # FieldValueInvalid, FieldValueRequired, FieldValueNotSupported, FieldValueTypeInvalid...
    field: str  # e.g. spec.replicas
    message: str
    # The check's own words (the JSON Schema validator's message, the CEL rule's): what offline checks print.
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "field": self.field, "message": self.message}


def version_schema(crd: Json, version: str) -> Json | None:
    """The openAPIV3Schema of one version of a CRD (None when the version is not there or has no schema)."""
    for entry in crd.get("spec", {}).get("versions") or []:
        if entry.get("name") == version:
            schema = (entry.get("schema") or {}).get("openAPIV3Schema")
            return schema if isinstance(schema, dict) else None
    return None


def apply_defaults(node: Json, value: Any) -> Any:
    """`default`s filled in for absent properties of objects that are present (never for null)."""
    if isinstance(value, dict):
        value = dict(value)
        properties = node.get("properties") or {}
        for key, child in properties.items():
            if key not in value and "default" in child:
                value[key] = copy.deepcopy(child["default"])
            if key in value:
                value[key] = apply_defaults(child, value[key])
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value.keys() - properties.keys():
                value[key] = apply_defaults(extra, value[key])
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        value = [apply_defaults(node["items"], item) for item in value]
    return value


def prune(node: Json, value: Any, path: str = "") -> tuple[Any, list[str]]:
    """The value without fields the schema does not know (as stored), and the paths of those fields."""
    dropped: list[str] = []
    if isinstance(value, dict) and not node.get("x-kubernetes-preserve-unknown-fields"):
        properties = node.get("properties") or {}
        extra = node.get("additionalProperties")
        kept: Json = {}
        for key, item in value.items():
            if path == "" and key in _SERVER_FIELDS:
                kept[key] = item
                continue
            child = properties.get(key, extra if isinstance(extra, dict) else None)
            if child is None and extra is not True:
                dropped.append(f"{path}.{key}".lstrip("."))
                continue
            if item is None and not (child or {}).get("nullable"):
                continue  # a null where null is not allowed is dropped (then defaulted), not refused
            kept[key], more = prune(child or {"x-kubernetes-preserve-unknown-fields": True}, item,
                                    f"{path}.{key}")
            dropped += more
        return kept, dropped
    if isinstance(value, dict):  # unknown fields kept here, but known ones below are still pruned
        properties = node.get("properties") or {}
        out = dict(value)
        for key, child in properties.items():
            if key in out:
                out[key], more = prune(child, out[key], f"{path}.{key}")
                dropped += more
        return out, dropped
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        items = []
        for index, item in enumerate(value):
            pruned, more = prune(node["items"], item, f"{path}[{index}]")
            items.append(pruned)
            dropped += more
        return items, dropped
    return value, dropped


def _to_jsonschema(node: Json) -> Json:
    """A Kubernetes structural schema as JSON Schema (nullable and int-or-string become types)."""
    out: Json = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if isinstance(node.get("properties"), dict):
        out["properties"] = {k: _to_jsonschema(v) for k, v in node["properties"].items()}
    for key in ("additionalProperties", "items"):
        if isinstance(node.get(key), dict):
            out[key] = _to_jsonschema(node[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in node:
            out[key] = [_to_jsonschema(s) for s in node[key]]
    if "not" in node:
        out["not"] = _to_jsonschema(node["not"])
    out.pop("default", None)  # defaults are applied before validation; JSON Schema would ignore them
    return out


@functools.lru_cache(maxsize=32)
def _validator(schema_json: str) -> jsonschema.Draft4Validator:
    schema = _to_jsonschema(json.loads(schema_json))
    schema.setdefault("properties", {})
    for field in _SERVER_FIELDS:
        schema["properties"].pop(field, None)
    # OpenAPI v3.0's schema dialect is Draft 4's (exclusiveMinimum is a boolean there).
    return jsonschema.Draft4Validator(schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)


_REASONS = {"required": "FieldValueRequired", "enum": "FieldValueNotSupported",
            "type": "FieldValueTypeInvalid"}


def _field(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


def _schema_causes(schema: Json, obj: Json) -> list[Cause]:
    causes = []
    for error in sorted(_validator(json.dumps(schema, sort_keys=True)).iter_errors(obj),
                        key=lambda e: [str(p) for p in e.absolute_path]):
        field = _field(error.absolute_path)
        if error.validator == "required":
            missing = str(error.message).split("'")[1] if "'" in str(error.message) else ""
            field = f"{field}.{missing}".lstrip(".")
            message = "Required value"
        elif error.validator == "type":
            message = (f'Invalid value: "{_kind(error.instance)}": {field} in body must be of type '
                       f"{error.validator_value}: {json.dumps(error.instance)}")
        elif error.validator == "enum":
            allowed = ", ".join(json.dumps(v) for v in error.validator_value)
            message = f"Unsupported value: {json.dumps(error.instance)}: supported values: {allowed}"
        else:
            message = f"Invalid value: {json.dumps(error.instance)}: {field} in body {error.message}"
        causes.append(Cause(_REASONS.get(str(error.validator), "FieldValueInvalid"), field,
                            f"{field}: {message}", str(error.message)))
    return causes


def _kind(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), "null")


@functools.lru_cache(maxsize=128)
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _cel_causes(node: Json, value: Any, path: str = "") -> list[Cause]:
    """Every `x-kubernetes-validations` rule the value breaks (transition rules need an old object)."""
    causes: list[Cause] = []
    for rule in node.get("x-kubernetes-validations") or []:
        if "oldSelf" in rule["rule"]:
            continue
        result = _program(rule["rule"]).evaluate({"self": json_to_cel(value)})
        if isinstance(result, Exception) or not bool(result):
            field = path.lstrip(".") or "<root>"
            message = rule.get("message") or f"failed rule: {rule['rule']}"
            causes.append(Cause("FieldValueInvalid", field, f"{field}: Invalid value: \"object\": {message}",
                                message))
    if isinstance(value, dict):
        properties = node.get("properties") or {}
        for key, child in properties.items():
            if key in value and key not in ("metadata",):
                causes += _cel_causes(child, value[key], f"{path}.{key}")
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value.keys() - properties.keys():
                causes += _cel_causes(extra, value[key], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(value):
            causes += _cel_causes(node["items"], item, f"{path}[{index}]")
    return causes


def admit(schema: Json, obj: Json, strict: bool = False) -> tuple[Json, list[Cause]]:
    """What the API server stores for `obj` (defaulted, pruned), or why it refuses it (the causes).

    `strict` is `?fieldValidation=Strict`: an unknown field is refused instead of silently dropped.
    """
    pruned, dropped = prune(schema, obj)
    if strict and dropped:
        return pruned, [_undeclared(f) for f in dropped]
    pruned = apply_defaults(schema, pruned)
    causes = _schema_causes(schema, pruned)
    if causes:
        return pruned, causes  # CEL rules run only on objects that pass the structural schema
    return pruned, _cel_causes(schema, pruned)


def _undeclared(field: str) -> Cause:
    name = field.rsplit(".", 1)[-1]
    # The detail is worded as the JSON Schema validator words an additional property.
    return Cause("FieldValueInvalid", field, f".{field}: field not declared in schema",
                 f"Additional properties are not allowed ({name!r} was unexpected)")


def violations(crd: Json, obj: Json) -> list[str]:
    """Why the API server would refuse `obj` (an instance of `crd`) under strict field validation, or []."""
    spec = crd.get("spec") or {}
    group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
    if group != spec.get("group") or obj.get("kind") != (spec.get("names") or {}).get("kind"):
        return [f"apiVersion/kind {obj.get('apiVersion')}/{obj.get('kind')} is not this CRD's"]
    schema = version_schema(crd, version)
    if schema is None:
        return [f"CRD {crd.get('metadata', {}).get('name')} has no version {version} with a schema"]
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        return ["metadata.name: Required value"]
    _, causes = admit(schema, obj, strict=True)
    return [f"{cause.field}: {cause.detail}" for cause in causes]
