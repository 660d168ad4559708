"""The patch flavours of the Kubernetes API: JSON merge, strategic merge (approximated), JSON patch."""
from __future__ import annotations

import copy
from typing import Any

import jsonpatch

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"
APPLY_CBOR = "application/apply-patch+cbor"


class PatchError(Exception):
    """A patch the server refuses; `code` is the HTTP status it answers with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# Lists the built-in types merge by a key (patchMergeKey) rather than replace.
_MERGE_KEYS = ("name", "containerPort", "mountPath", "uid", "type", "ip")
_PRIMITIVE_MERGE_LISTS = {"finalizers"}


def _merge_key(items: list) -> str | None:
    if not items or not all(isinstance(i, dict) for i in items):
        return None
    for key in _MERGE_KEYS:
        if all(key in i for i in items):
            return key
    return None


def _strategic_list(target: list, patch: list, field: str) -> list:
    if not patch:
        return []  # an explicit empty list empties the field
    if field in _PRIMITIVE_MERGE_LISTS and all(not isinstance(i, dict) for i in patch):
        return list(dict.fromkeys([*target, *patch]))
    key = _merge_key(patch) if isinstance(target, list) else None
    if key is None or _merge_key(target) not in (key, None):
        return [i for i in copy.deepcopy(patch) if not (isinstance(i, dict) and "$patch" in i)]
    out = [copy.deepcopy(i) for i in target]
    for item in patch:
        idx = next((n for n, cur in enumerate(out) if cur.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
        elif idx is None:
            out.append(copy.deepcopy(item))
        else:
            out[idx] = strategic_merge_patch(out[idx], item)
    return out


def strategic_merge_patch(target: Any, patch: Any, field: str = "") -> Any:
    """An approximation of strategic merge for built-in kinds: lists of named items merge by key."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            out[field] = [i for i in out.get(field) or [] if i not in value]
            continue
        if key.startswith("$"):
            continue  # $setElementOrder/... and other directives only order lists
        if value is None:
            out.pop(key, None)
        elif isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = _strategic_list(out[key], value, key)
        else:
            out[key] = strategic_merge_patch(out.get(key), value, key)
    return out


def json_patch(target: dict, ops: Any) -> dict:
    """RFC 6902; a failed `test` or a bad path answers 422 like the real server."""
    if not isinstance(ops, list):
        raise PatchError(400, "json patch must be a list of operations")
    try:
        return jsonpatch.JsonPatch(ops).apply(target, in_place=False)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise PatchError(422, f"the server rejected our request due to an error in our request: {exc}")
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, KeyError, IndexError) as exc:
        raise PatchError(422, f"the server rejected our request due to an error in our request: {exc}")


def apply_patch(target: dict, patch: Any, content_type: str, custom: bool) -> dict:
    """Dispatch on the request's Content-Type; custom resources get merge for strategic."""
    ctype = content_type.split(";")[0].strip()
    if ctype == JSON_PATCH:
        return json_patch(target, patch)
    if not isinstance(patch, dict):
        raise PatchError(400, f"patch body must be an object for {ctype}")
    if ctype == STRATEGIC:
        # The real server answers 415 for custom resources; here they get a plain merge.
        return merge_patch(target, patch) if custom else strategic_merge_patch(target, patch)
    if ctype in (MERGE, APPLY, APPLY_CBOR):
        return merge_patch(target, patch)
    raise PatchError(415, f"the body of the request was in an unknown format - accepted media types "
                          f"include: {JSON_PATCH}, {MERGE}, {APPLY}")
