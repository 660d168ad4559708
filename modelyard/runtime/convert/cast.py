"""Streaming precision change: floating-point tensors to the requested dtype, others untouched."""
from __future__ import annotations

import torch

from modelyard.runtime.convert.source import Entry

CHUNK_ELEMS = 4 << 20
FLOAT_PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def target_dtype(precision: str) -> torch.dtype | None:
    """The dtype a float precision asks for; None for 'auto' (keep what the input holds)."""
    return FLOAT_PRECISIONS.get(precision)


def cast_entry(e: Entry, dtype: torch.dtype | None) -> Entry:
    if dtype is None or not e.dtype.is_floating_point:
        return e
    return Entry(e.name, e.shape, dtype, e.file)


def cast_chunks(tensor: torch.Tensor, dtype: torch.dtype, chunk_elems: int = CHUNK_ELEMS):
    """Yield ``(source_piece, output_bytes)`` for ``tensor`` cast to ``dtype``, a few MB at a time.

    Peak memory is one chunk plus its cast, even for a 500 MB embedding; the caller may drop the
    source piece's pages (mmap-loaded inputs) once its bytes are written.
    """
    flat = tensor.detach().reshape(-1)
    for start in range(0, flat.numel(), chunk_elems):
        piece = flat[start:start + chunk_elems]
        out = piece.to(dtype) if piece.dtype != dtype else piece
        yield piece, out.contiguous().view(torch.uint8).numpy()


def needs_cast(entries: list[Entry], dtype: torch.dtype | None) -> bool:
    return dtype is not None and any(e.dtype.is_floating_point and e.dtype != dtype for e in entries)
