"""Streaming precision change: floating-point tensors to the requested dtype, others untouched."""
from __future__ import annotations

from typing import Iterator

import torch

from modelyard.runtime.convert.source import Entry

FLOAT_PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def target_dtype(precision: str) -> torch.dtype | None:
    """The dtype a float precision asks for; None for 'auto' (keep what the input holds)."""
    return FLOAT_PRECISIONS.get(precision)


def cast_entry(e: Entry, dtype: torch.dtype | None) -> Entry:
    if dtype is None or not e.dtype.is_floating_point:
        return e
    return Entry(e.name, e.shape, dtype, e.file)


def cast_stream(tensors: Iterator[tuple[str, torch.Tensor]], dtype: torch.dtype | None):
    """Yield each tensor cast as it passes: memory holds one tensor, not the model."""
    for name, t in tensors:
        if dtype is not None and t.dtype.is_floating_point and t.dtype != dtype:
            t = t.to(dtype)
        yield name, t


def needs_cast(entries: list[Entry], dtype: torch.dtype | None) -> bool:
    return dtype is not None and any(e.dtype.is_floating_point and e.dtype != dtype for e in entries)
