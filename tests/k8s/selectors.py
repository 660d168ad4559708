"""Label and field selectors with the grammar of the Kubernetes API server."""
from __future__ import annotations

import re
from collections.abc import Callable

Predicate = Callable[[dict], bool]


class SelectorError(ValueError):
    """A selector the real server would reject with 400 BadRequest."""


_SET_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(in|notin)\s*\(([^)]*)\))?\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|=|!=)\s*([A-Za-z0-9_.-]*)\s*$")


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside the parentheses of an `in (...)` list."""
    terms, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    terms.append(cur)
    return [t for t in terms if t.strip()]


def _label_term(term: str) -> Predicate:
    m = _EQ_RE.match(term)
    if m:
        key, op, value = m.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    m = _SET_RE.match(term)
    if not m:
        raise SelectorError(f"unable to parse requirement: {term!r}")
    neg, key, op, values = m.groups()
    if op and neg:
        raise SelectorError(f"unable to parse requirement: {term!r}")
    if op == "in":
        vals = {v.strip() for v in values.split(",")}
        return lambda labels: labels.get(key) in vals
    if op == "notin":
        vals = {v.strip() for v in values.split(",")}
        return lambda labels: labels.get(key) not in vals
    if neg:
        return lambda labels: key not in labels
    return lambda labels: key in labels


def label_selector(text: str | None) -> Predicate:
    """`a=b,c!=d,e in (x,y),f notin (z),g,!h` → predicate over an object."""
    preds = [_label_term(t) for t in _split_terms(text or "")]

    def match(obj: dict) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(p(labels) for p in preds)
    return match


def _field_value(obj: dict, path: str) -> str | None:
    cur: object = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return None if cur is None else str(cur)


SUPPORTED_FIELDS = {"metadata.name", "metadata.namespace", "status.phase", "spec.nodeName",
                    "involvedObject.name", "involvedObject.namespace", "involvedObject.kind",
                    "involvedObject.uid", "regarding.name", "regarding.kind", "type", "reason"}


def field_selector(text: str | None) -> Predicate:
    """`metadata.name=x,metadata.namespace!=y` (the fields a real server indexes)."""
    preds: list[Predicate] = []
    for term in _split_terms(text or ""):
        m = _EQ_RE.match(term)
        if not m:
            raise SelectorError(f"invalid field selector: {term!r}")
        key, op, value = m.groups()
        if key not in SUPPORTED_FIELDS:
            raise SelectorError(f'field label not supported: {key}')
        if op == "!=":
            preds.append(lambda o, k=key, v=value: _field_value(o, k) != v)
        else:
            preds.append(lambda o, k=key, v=value: (_field_value(o, k) or "") == v)
    return lambda obj: all(p(obj) for p in preds)


def combined(labels: str | None, fields: str | None) -> Predicate:
    lp, fp = label_selector(labels), field_selector(fields)
    return lambda obj: lp(obj) and fp(obj)
