"""Validate a custom resource against its CRD like the API server does.

`validate_against_crd(crd, obj)` returns `[(field_path, message)]` — structural schema checks
(types, enums, required, bounds, patterns, unknown fields) with `jsonschema`, then the CRD's
`x-kubernetes-validations` CEL rules with `celpy`. `apply_defaults(crd, obj)` fills in schema
defaults in place, as the server does before validating. Messages follow the server's wording,
e.g. `Unsupported value: "int3": supported values: "auto", "float32"`.
"""
from __future__ import annotations

import copy
import functools
import json
from typing import Any

import celpy
import jsonschema
from celpy import celtypes
from celpy.adapter import json_to_cel

Error = tuple[str, str]


def version_schema(crd: dict, version: str | None = None) -> dict:
    """The openAPIV3Schema of `version` (or of the storage/first version)."""
    versions = (crd.get("spec") or {}).get("versions") or []
    chosen = next((v for v in versions if v.get("name") == version), None)
    chosen = chosen or next((v for v in versions if v.get("storage")), None) or (versions[0] if versions else {})
    return ((chosen.get("schema") or {}).get("openAPIV3Schema")) or {}


def _to_jsonschema(node: dict) -> dict:
    """Kubernetes structural schema → JSON Schema (nullable, int-or-string, unknown fields)."""
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-") and k not in
           {"properties", "items", "additionalProperties", "nullable", "default", "description"}}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in node:
        out["properties"] = {k: _to_jsonschema(v) for k, v in node["properties"].items()}
    if isinstance(node.get("items"), dict):
        out["items"] = _to_jsonschema(node["items"])
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        out["additionalProperties"] = _to_jsonschema(extra)
    elif extra is not None:
        out["additionalProperties"] = extra
    elif node.get("type") == "object" and not node.get("x-kubernetes-preserve-unknown-fields") \
            and not node.get("x-kubernetes-embedded-resource"):
        out["additionalProperties"] = False
    return out


def _path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _fmt(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (str, int, float, bool)) or value is None else \
        f'"{type(value).__name__ if not isinstance(value, dict) else "object"}"'


def _message(err: jsonschema.ValidationError) -> list[Error]:
    path = _path(err.absolute_path)
    v, kw, arg = err.instance, err.validator, err.validator_value
    if kw == "enum":
        return [(path, f"Unsupported value: {_fmt(v)}: supported values: " + ", ".join(_fmt(a) for a in arg))]
    if kw == "required":
        missing = [r for r in arg if isinstance(v, dict) and r not in v]
        return [(_path([*err.absolute_path, m]), "Required value") for m in missing]
    if kw == "additionalProperties" and isinstance(v, dict):
        known = set((err.schema.get("properties") or {}))
        return [(_path([*err.absolute_path, k]), "field not declared in schema") for k in v if k not in known]
    if kw == "type":
        wanted = arg if isinstance(arg, str) else arg[0]
        return [(path, f"Invalid value: {_fmt(v)}: {path} in body must be of type {wanted}: {_fmt(v)}")]
    wording = {
        "minimum": f"should be greater than or equal to {arg}",
        "maximum": f"should be less than or equal to {arg}",
        "exclusiveMinimum": f"should be greater than {arg}",
        "exclusiveMaximum": f"should be less than {arg}",
        "pattern": f"should match '{arg}'",
        "minLength": f"should be at least {arg} chars long",
        "maxLength": f"may not be longer than {arg}",
        "minItems": f"should have at least {arg} items",
        "maxItems": f"must have at most {arg} items",
        "format": f"must be of type {arg}",
    }.get(kw)
    if wording is None:
        return [(path, f"Invalid value: {_fmt(v)}: {err.message}")]
    return [(path, f"Invalid value: {_fmt(v)}: {path} in body {wording}")]


def apply_defaults(schema: dict, value: Any) -> Any:
    """Fill `default`s of missing properties in place (recursively); returns value."""
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                apply_defaults(sub, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                if key not in (schema.get("properties") or {}):
                    apply_defaults(extra, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(schema["items"], item)
    return value


def prune_unknown(schema: dict, value: Any, root: bool = True) -> Any:
    """Drop fields the structural schema does not declare (in place), as the server prunes."""
    keep = {"apiVersion", "kind", "metadata"} if root else set()
    if isinstance(value, dict) and schema.get("type") == "object" and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        for key in [k for k in value if k not in (schema.get("properties") or {}) and k not in keep]:
            value.pop(key)
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value and key not in keep:
                prune_unknown(sub, value[key], False)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            prune_unknown(schema["items"], item, False)
    return value


def apply_crd_defaults(crd: dict, obj: dict, version: str | None = None) -> dict:
    return apply_defaults(version_schema(crd, version), obj)


def _is_sorted(lst: Any) -> celtypes.BoolType:
    items = list(lst)
    return celtypes.BoolType(items == sorted(items))


CEL_FUNCTIONS = {
    "isSorted": _is_sorted,
    "lowerAscii": lambda s: celtypes.StringType(str(s).lower()),
    "upperAscii": lambda s: celtypes.StringType(str(s).upper()),
    "trim": lambda s: celtypes.StringType(str(s).strip()),
}


@functools.lru_cache(maxsize=512)
def _program(rule: str):
    env = celpy.Environment()
    return env.program(env.compile(rule), functions=CEL_FUNCTIONS)


def _cel_rule(rule: dict, path: str, value: Any, old: Any) -> list[Error]:
    text = rule["rule"]
    if "oldSelf" in text and old is None:
        return []  # transition rules only run on updates, like the real server
    field = path
    if rule.get("fieldPath"):
        field = (path + rule["fieldPath"]) if path else rule["fieldPath"].lstrip(".")
    try:
        act = {"self": json_to_cel(value)}
        if old is not None:
            act["oldSelf"] = json_to_cel(old)
        result = _program(text).evaluate(act)
    except Exception as exc:  # compile or evaluation error: the server reports it as Invalid too
        return [(field, f"Invalid value: {_fmt(value)}: rule {text!r} failed to evaluate: {exc}")]
    if isinstance(result, celtypes.BoolType) and bool(result):
        return []
    if not isinstance(result, celtypes.BoolType):
        return [(field, f"Invalid value: {_fmt(value)}: rule {text!r} failed to evaluate: {result}")]
    message = rule.get("message") or f"failed rule: {text}"
    return [(field, f"Invalid value: {_fmt(value)}: {message}")]


def _walk_cel(schema: dict, value: Any, old: Any, parts: list) -> list[Error]:
    if old is not None and value == old:
        return []  # ratcheting, as the server does (1.30+): an unchanged value is not re-checked
    errors: list[Error] = []
    path = _path(parts)
    for rule in schema.get("x-kubernetes-validations") or []:
        errors += _cel_rule(rule, path, value, old)
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                prev = old.get(key) if isinstance(old, dict) else None
                errors += _walk_cel(sub, value[key], prev, [*parts, key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += _walk_cel(schema["items"], item, None, [*parts, i])
    return errors


_PREPARED: dict[int, tuple[dict, dict, jsonschema.Draft7Validator]] = {}


def _prepared(schema: dict) -> tuple[dict, jsonschema.Draft7Validator]:
    """The schema without apiVersion/kind/metadata and its validator, built once per schema."""
    hit = _PREPARED.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1], hit[2]
    sub = copy.deepcopy(schema)
    for key in ("apiVersion", "kind", "metadata"):
        (sub.get("properties") or {}).pop(key, None)
    if sub.get("type") == "object":
        sub.setdefault("properties", {})
    validator = jsonschema.Draft7Validator(_to_jsonschema(sub))
    _PREPARED[id(schema)] = (schema, sub, validator)  # holds `schema`, so its id is not reused
    return sub, validator


def _cel_view(obj: dict) -> dict:
    """What CEL's root `self` sees: the body, and of metadata only name and generateName."""
    meta = obj.get("metadata") or {}
    return {**{k: v for k, v in obj.items() if k not in {"apiVersion", "kind", "metadata"}},
            "metadata": {k: meta[k] for k in ("name", "generateName") if k in meta}}


def validate_schema(schema: dict, obj: dict, old: dict | None = None) -> list[Error]:
    """Structural errors first; CEL rules only run on a structurally valid object (as the server)."""
    body = {k: v for k, v in obj.items() if k not in {"apiVersion", "kind", "metadata"}}
    sub, validator = _prepared(schema)
    errors: list[Error] = []
    for err in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path))):
        errors += _message(err)
    if errors:
        return errors
    return _walk_cel(sub, _cel_view(obj), _cel_view(old) if old else None, [])


def validate_against_crd(crd: dict, obj: dict, old: dict | None = None) -> list[Error]:
    """[(field_path, message)] for `obj` against the CRD version named by its apiVersion."""
    version = str(obj.get("apiVersion", "")).rpartition("/")[2] or None
    schema = version_schema(crd, version)
    return validate_schema(schema, apply_defaults(schema, copy.deepcopy(obj)), old)
