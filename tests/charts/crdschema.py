"""Validate custom resources offline the way the API server would: structural schema, defaults, CEL rules."""

from __future__ import annotations

import copy
from typing import Any

import celpy
import jsonschema

Json = dict[str, Any]


def version_schema(crd: Json, version: str) -> Json:
    """The openAPIV3Schema of one served version of a CRD."""
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            schema: Json = entry["schema"]["openAPIV3Schema"]
            return schema
    raise KeyError(f"CRD {crd['metadata']['name']} has no version {version}")


def to_jsonschema(node: Json, top: bool = True) -> Json:
    """Translate a Kubernetes structural schema into JSON Schema.

    Unknown fields are rejected (kubectl and the API server use strict field validation by default) unless the
    node keeps them (`x-kubernetes-preserve-unknown-fields`); `nullable` and `int-or-string` become types.
    """
    out: Json = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in node:
        out["properties"] = {k: to_jsonschema(v, top=False) for k, v in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_jsonschema(node["additionalProperties"], top=False)
    if "items" in node:
        out["items"] = to_jsonschema(node["items"], top=False)
    for key in ("allOf", "anyOf", "oneOf"):
        if key in node:
            out[key] = [to_jsonschema(s, top=False) for s in node[key]]
    if top:
        # apiVersion, kind and metadata are validated by the API server itself, not the CRD.
        out.setdefault("properties", {})
        # metadata is ObjectMeta whatever the CRD says (usually just `type: object`).
        out["properties"] = {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            **out["properties"],
            "metadata": {"type": "object", "required": ["name"]},
        }
    if (
        out.get("type") == "object"
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def apply_defaults(node: Json, value: Any) -> Any:
    """What the API server stores: `default`s filled in for absent properties of present objects."""
    if isinstance(value, dict):
        value = dict(value)
        for key, child in node.get("properties", {}).items():
            if key not in value and "default" in child:
                value[key] = copy.deepcopy(child["default"])
            if key in value:
                value[key] = apply_defaults(child, value[key])
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value.keys() - node.get("properties", {}).keys():
                value[key] = apply_defaults(extra, value[key])
    elif isinstance(value, list) and "items" in node:
        value = [apply_defaults(node["items"], item) for item in value]
    return value


def cel_violations(node: Json, value: Any, path: str = "") -> list[str]:
    """Messages of every `x-kubernetes-validations` rule the value breaks (transition rules are skipped:
    they compare with the stored object, and a new object has none)."""
    found: list[str] = []
    env = celpy.Environment()
    for rule in node.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue
        program = env.program(env.compile(rule["rule"]))
        result = program.evaluate({"self": celpy.json_to_cel(value)})
        if isinstance(result, Exception) or not bool(result):
            found.append(f"{path or '.'}: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for key, child in node.get("properties", {}).items():
            if key in value:
                found += cel_violations(child, value[key], f"{path}.{key}")
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value.keys() - node.get("properties", {}).keys():
                found += cel_violations(extra, value[key], f"{path}.{key}")
    elif isinstance(value, list) and "items" in node:
        for index, item in enumerate(value):
            found += cel_violations(node["items"], item, f"{path}[{index}]")
    return found


def violations(crd: Json, obj: Json) -> list[str]:
    """Why the API server would reject `obj` (an instance of `crd`), or [] when it would accept it."""
    group = crd["spec"]["group"]
    api_group, _, version = obj.get("apiVersion", "").partition("/")
    if api_group != group or obj.get("kind") != crd["spec"]["names"]["kind"]:
        return [f"apiVersion/kind {obj.get('apiVersion')}/{obj.get('kind')} is not this CRD's"]
    try:
        schema = version_schema(crd, version)
    except KeyError as err:
        return [str(err)]
    validator = jsonschema.Draft7Validator(to_jsonschema(schema))
    errors = [
        f"{'.'.join(map(str, e.absolute_path)) or '.'}: {e.message}"
        for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    ]
    if errors:
        return errors  # CEL rules run only on objects that pass the structural schema
    return cel_violations(schema, apply_defaults(schema, obj))
