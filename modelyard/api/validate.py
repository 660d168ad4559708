"""Offline validation of a Model: the same rules the API server applies with the CRD.

Structure, types, enums, ranges and patterns come from the pydantic models; cross-field rules are
the CEL expressions of the CRD (``RULES`` in ``types``), evaluated here with cel-python. Every
problem names the field path (``spec.source.uri``) and says what would be valid.
"""
from __future__ import annotations

import functools
import sys
import threading
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import ValidationError as _PydanticError

from modelyard.api.schema import _unwrap_optional, rules_by_path
from modelyard.api.types import API_VERSION, KIND, Model, ModelSpec


class ValidationError(ValueError):
    """A Model that would be rejected. ``issues`` holds (field path, message) pairs."""

    def __init__(self, issues: list[tuple[str, str]], source: str = ""):
        self.issues = issues
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__("\n".join(f"{prefix}{path}: {msg}" if path else f"{prefix}{msg}" for path, msg in issues))

    @property
    def fields(self) -> list[str]:
        return [path for path, _ in self.issues]


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(err: dict) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "literal_error":
        return f"unsupported value {value!r}; valid values: {ctx.get('expected', '').replace(' or ', ', ')}"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch":
        return f"invalid value {value!r}: {_PATTERN_HINTS.get(ctx.get('pattern'), 'must match ' + str(ctx.get('pattern')))}"
    if kind in ("greater_than_equal", "less_than_equal"):
        return f"invalid value {value!r}: {err['msg'].lower()}"
    if kind in ("too_long",):
        return f"too many items or characters: {err['msg'].lower()}"
    return f"invalid value {value!r}: {err['msg']}"


def _hints() -> dict[str, str]:
    from modelyard.api import types as t

    return {
        t.URI: "use hf://org/repo, s3://bucket/prefix, http(s)://host/path, pvc://claim/path or file:///path",
        t.DNS_LABEL: "must be a DNS-1123 label: lower-case letters, digits and '-', starting and ending alphanumeric",
        t.DNS_SUBDOMAIN: "must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.'",
        t.QUANTITY: "must be a Kubernetes quantity, e.g. 50Gi or 500Mi",
        t.GPU_MEMORY: "must be a size such as 80GiB or 24GB, or a resource profile name such as nvidia-a100-80gb",
        t.ENV_NAME: "must be an environment variable name (letters, digits, '_', starting with a letter or '_')",
        t.LABEL_KEY: "must be a resource name such as nvidia.com/gpu",
        r"^[a-z]([-a-z0-9]*[a-z0-9])?$": "must be a DNS-1035 label: lower-case letters, digits and '-', starting with a letter",
    }


_PATTERN_HINTS = _hints()


def _unknown_field_hint(loc: tuple, data: dict) -> str:
    """'unknown field; valid fields here: ...' using the model class at that location."""
    cls: Any = Model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = next((f for n, f in cls.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return ""
        tp, _ = _unwrap_optional(field.annotation)
        if get_origin(tp) is list:
            tp = get_args(tp)[0]
        cls = tp
    if not hasattr(cls, "model_fields"):
        return ""
    names = sorted(f.alias or n for n, f in cls.model_fields.items())
    return "; valid fields here: " + ", ".join(names)


_PROGRAMS_LOCK = threading.Lock()


def _programs():
    """The compiled CEL rules. Building celpy's parser takes ~0.5 s: once per process, even when
    many threads (the operator's workers) ask at the same moment."""
    with _PROGRAMS_LOCK:
        return _compile()


@functools.lru_cache(maxsize=None)
def _compile():
    import celpy

    env = celpy.Environment()
    return [(path, env.program(env.compile(rule)), rule, message, field)
            for path, rule, message, field in rules_by_path(ModelSpec, "spec")]


def _objects_at(data: Any, path: str) -> list[tuple[str, Any]]:
    """Objects at a rules path like 'spec.adapters[]' with their concrete paths."""
    found = [("", data)]
    for part in path.split("."):
        is_list = part.endswith("[]")
        key = part[:-2] if is_list else part
        nxt = []
        for prefix, obj in found:
            if not isinstance(obj, dict) or key not in obj:
                continue
            here = f"{prefix}.{key}" if prefix else key
            if is_list and isinstance(obj[key], list):
                nxt.extend((f"{here}[{i}]", item) for i, item in enumerate(obj[key]))
            elif not is_list:
                nxt.append((here, obj[key]))
        found = nxt
    return found


def _as_served(model: Model, raw_spec: dict) -> dict:
    """The spec as the API server holds it: schema defaults applied, but no empty lists/maps
    the user did not write (the schema gives those no default, so `has()` is false)."""
    spec = model.spec.model_dump(by_alias=True, exclude_none=True)
    return {k: v for k, v in spec.items() if v not in ([], {}) or k in raw_spec}


def check_rules(model: Model, raw_spec: dict | None = None) -> list[tuple[str, str]]:
    """Evaluate the CRD's CEL rules on a structurally valid Model."""
    import celpy

    data = {"spec": _as_served(model, raw_spec or {})}
    issues = []
    for path, program, rule, message, field in _programs():
        for where, obj in _objects_at(data, path):
            where += field  # a rule with a fieldPath names that field
            try:
                ok = program.evaluate({"self": celpy.json_to_cel(obj)})
            except Exception as exc:  # a rule that cannot evaluate is reported, not ignored
                issues.append((where, f"rule {rule!r} could not be evaluated: {exc}"))
                continue
            if not bool(ok):
                issues.append((where, message))
    return issues


def parse_model(data: Any, source: str = "", rules: bool = True) -> Model:
    """Validate a parsed Model document; raise ValidationError naming every bad field.

    ``rules=False`` skips the CEL rules: for objects read back from an API server, which has
    already enforced them (the CRD carries them as x-kubernetes-validations)."""
    if not isinstance(data, dict):
        raise ValidationError([("", f"expected a Model object (apiVersion: {API_VERSION}, kind: {KIND}), got {type(data).__name__}")], source)
    try:
        model = Model.model_validate(data)
    except _PydanticError as exc:
        issues = []
        for err in exc.errors():
            msg = _message(err)
            if err["type"] == "extra_forbidden":
                msg += _unknown_field_hint(err["loc"], data)
            issues.append((_path(err["loc"]), msg))
        raise ValidationError(issues, source) from None
    issues = check_rules(model, data.get("spec") if isinstance(data.get("spec"), dict) else {}) if rules else []
    if issues:
        raise ValidationError(issues, source)
    return model


def load_documents(path: str | Path) -> list[Any]:
    """Parse YAML; a syntax error becomes a ValidationError that gives the line."""
    text = sys.stdin.read() if str(path) == "-" else Path(path).read_text()
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ValidationError([("", f"malformed YAML at {where}: {problem}")], str(path)) from None


def load_model(path: str | Path) -> Model:
    """Read and validate the single Model in a YAML file."""
    docs = [d for d in load_documents(path) if not (isinstance(d, dict) and d.get("kind") not in (None, KIND))]
    if len(docs) != 1:
        raise ValidationError([("", f"expected exactly one Model document, found {len(docs)}")], str(path))
    return parse_model(docs[0], str(path))
