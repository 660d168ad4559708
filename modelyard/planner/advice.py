"""When it does not fit: find the smallest change that does.

Changes are tried in this order and the first that fits is "the smallest":
1. a shorter context (when the weights fit and only the asked-for context does not),
2. float32 → bfloat16 (no practical quality change),
3. more GPUs at the same precision (the fewest that fit, up to 8; for CPU plans: more memory),
4. lower precision on the same GPUs: int8, then int4,
5. lower precision and more GPUs together.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelyard.planner.sizes import GiB, format_bytes

ORDER = ("float32", "float16", "bfloat16", "fp8", "int8", "int4")
MAX_GPUS = 8


def _describe(change: dict[str, Any], plan) -> str:
    parts = []
    if "max_model_len" in change:
        parts.append(f"maxModelLen {change['max_model_len']}")
    if "precision" in change:
        q = f" ({plan.quantization})" if plan.quantization else ""
        parts.append(f"precision {change['precision']}{q}")
    if "gpus" in change:
        tp = plan.tensor_parallel_size
        parts.append(f"gpus {change['gpus']}" + (f" (tensor parallel {tp})" if tp > 1 else ""))
    if "memory" in change:
        parts.append(f"memory {change['memory']}")
    return " with ".join(parts)


def _candidates(base, current, kwargs) -> list[dict[str, Any]]:
    gpus, precision = kwargs["gpus"], current.precision
    out: list[dict[str, Any]] = []
    if 256 <= current.kv_cache_tokens < current.max_position_embeddings and current.kv_cache_tokens:
        tokens = current.kv_cache_tokens // 16 * 16
        if kwargs.get("max_model_len") is None or tokens < kwargs["max_model_len"]:
            out.append({"max_model_len": tokens})
    if precision == "float32":
        out.append({"precision": "bfloat16"})
    if gpus == 0:
        need = current.host_bytes / 0.9
        out.append({"memory": format_bytes(-(-int(need) // GiB) * GiB)})
    else:
        if "tensor parallel" in current.reason:  # a valid count below the asked one may do
            out += [{"gpus": g} for g in range(gpus - 1, 0, -1)]
        out += [{"gpus": g} for g in range(gpus + 1, MAX_GPUS + 1)]
    lower = [p for p in ("bfloat16", "int8", "int4") if precision in ORDER
             and ORDER.index(p) > ORDER.index(precision)] if not base.get("prequantized") else []
    out += [{"precision": p} for p in lower if p != "bfloat16"]
    if gpus:
        out += [{"precision": p, "gpus": g} for p in lower for g in range(gpus + 1, MAX_GPUS + 1)]
    return out


def suggest(current, kwargs: dict[str, Any], run: Callable[..., Any], base: dict[str, Any]):
    """(smallest change, other changes that fit) as readable strings."""
    found: list[str] = []
    seen: set = set()
    for change in _candidates(base, current, kwargs):
        try:
            alt = run(**{**kwargs, **change})
        except ValueError:
            continue
        if not alt.fits:
            continue
        kind = (tuple(sorted(change)), change.get("precision"))
        if kind in seen or (("precision",), change.get("precision")) in seen:
            continue  # only the fewest GPUs that fit for each precision
        seen.add(kind)
        found.append(_describe(change, alt))
        if len(found) >= 4:
            break
    return (found[0], found[1:]) if found else (None, [])
