"""Structural OpenAPI v3 schema for the CRD, generated from the typed models in ``types``.

A small walker over pydantic fields rather than pydantic's JSON Schema: Kubernetes wants a
structural schema (no $ref, no anyOf for optionals, ``properties`` and ``additionalProperties``
never together), a description on every field, and CEL rules as ``x-kubernetes-validations``.
"""
from __future__ import annotations

import types as _pytypes
import typing
from typing import Annotated, Any, Literal, get_args, get_origin

from annotated_types import Ge, Le, MaxLen
from pydantic import BaseModel, WithJsonSchema
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, _pytypes.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _constraints(field: FieldInfo, schema: dict, kind: str) -> None:
    for meta in field.metadata:
        if isinstance(meta, Ge):
            schema["minimum"] = meta.ge
        elif isinstance(meta, Le):
            schema["maximum"] = meta.le
        elif isinstance(meta, MaxLen):
            schema["maxItems" if kind == "array" else "maxLength"] = meta.max_length
        elif getattr(meta, "pattern", None):
            schema["pattern"] = meta.pattern


def type_schema(tp: Any) -> dict:
    """Schema of a Python type (without the field's description; with Annotated constraints)."""
    tp, _ = _unwrap_optional(tp)
    origin = get_origin(tp)
    if origin is Annotated:
        base, *metas = get_args(tp)
        schema = type_schema(base)
        for meta in metas:
            if isinstance(meta, FieldInfo):
                _constraints(meta, schema, schema.get("type", ""))
            elif isinstance(meta, WithJsonSchema) and (meta.json_schema or {}).get("x-kubernetes-int-or-string"):
                # structural int-or-string: anyOf integer|string, the string's pattern kept
                return {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, schema]}
        return schema
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return model_schema(tp)
    if origin is Literal:
        return {"type": "string", "enum": list(get_args(tp))}
    if origin is list:
        return {"type": "array", "items": type_schema(get_args(tp)[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": type_schema(get_args(tp)[1])}
    simple = {str: "string", int: "integer", bool: "boolean", float: "number"}
    if tp in simple:
        return {"type": simple[tp]}
    raise TypeError(f"no schema for {tp!r}")


def field_schema(field: FieldInfo) -> dict:
    schema = type_schema(field.annotation)
    _constraints(field, schema, schema.get("type", ""))
    if field.description:
        schema["description"] = field.description
    default = field.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        schema["default"] = {}  # the API server then applies the nested defaults
    elif default is not PydanticUndefined and default is not None and default not in ({}, []):
        schema["default"] = default
    return schema


def model_schema(cls: type[BaseModel]) -> dict:
    props: dict[str, dict] = {}
    required: list[str] = []
    for name, field in cls.model_fields.items():
        key = field.alias or name
        props[key] = field_schema(field)
        if field.is_required():
            required.append(key)
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if cls.__doc__:
        schema["description"] = " ".join(cls.__doc__.split())
    if required:
        schema["required"] = required
    rules = getattr(cls, "RULES", ())
    if rules:
        # an optional third element is the rule's fieldPath (".uri"): errors then name that field
        schema["x-kubernetes-validations"] = [{"rule": r[0], "message": r[1], **({"fieldPath": r[2]} if len(r) > 2 else {})}
                                              for r in rules]
    return schema


def rules_by_path(cls: type[BaseModel], path: str = "") -> list[tuple[str, str, str, str]]:
    """All CEL rules in the model tree as (json path, rule, message, fieldPath or ""); lists use ``[]``."""
    out = [(path, r[0], r[1], r[2] if len(r) > 2 else "") for r in getattr(cls, "RULES", ())]
    for name, field in cls.model_fields.items():
        tp, _ = _unwrap_optional(field.annotation)
        sub = f"{path}.{field.alias or name}" if path else (field.alias or name)
        if get_origin(tp) is list:
            tp, sub = get_args(tp)[0], sub + "[]"
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            out.extend(rules_by_path(tp, sub))
    return out
