"""Read PyTorch pickled state dicts safely: ``torch.load(weights_only=True, mmap=True)`` only.

A pickle that needs arbitrary code (a whole ``nn.Module`` saved with ``torch.save(model)``, or a
crafted ``__reduce__``) is refused by torch's restricted unpickler before any of its code runs.
"""
from __future__ import annotations

import ctypes
import functools
import os
import pickle
import re
from pathlib import Path

import torch

from modelyard.runtime.convert.source import Entry, TensorSource
from modelyard.runtime.errors import ConvertError

RESAVE_HINT = (
    "modelyard only loads plain state dicts (torch.load with weights_only=True) and never runs code from a pickle; "
    "re-save the weights where the model's code is trusted with `torch.save(model.state_dict(), path)`"
)
_WRAPPERS = ("state_dict", "model_state_dict", "model", "module")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    legacy = _is_legacy(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=not legacy)
    except pickle.UnpicklingError as exc:
        detail = _global_named(str(exc))
        raise ConvertError("UnsafePickle", f"{path.name} needs arbitrary code to unpickle ({detail.strip()}); {RESAVE_HINT}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ConvertError("CorruptFile", f"{path.name} is not a readable PyTorch checkpoint (truncated or corrupted?): {exc}") from None
    return _unwrap(obj, path)


def _global_named(text: str) -> str:
    """The one useful line of torch's refusal (which global it met), without its allowlisting advice."""
    m = re.search(r"(Unsupported global: GLOBAL [^ ]+|Unsupported operand [^ .]+|Trying to load unsupported GLOBAL [^ ]+)", text)
    return m.group(1) if m else text.strip().splitlines()[0][:200] if text.strip() else "refused by the restricted unpickler"


def _is_legacy(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) != b"PK"


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in _WRAPPERS:
            if isinstance(obj.get(key), dict):
                return _unwrap(obj[key], path)
    kind = type(obj).__name__
    raise ConvertError(
        "NotAStateDict",
        f"{path.name} holds a {kind}, not a state dict of tensors (expected {{name: tensor}}, optionally under 'state_dict'); {RESAVE_HINT}",
    )


class PytorchSource(TensorSource):
    format = "pytorch"

    def __init__(self, files: list[Path]):
        super().__init__()
        self.files = files
        self.entries = []
        self._states: dict[Path, dict] = {}  # memory-mapped shards stay open (address space only, no RSS)
        for path in files:
            state = load_state_dict(path)
            self.entries += [Entry(k, tuple(v.shape), v.dtype, path) for k, v in state.items()]
            if not _is_legacy(path):
                self._states[path] = state
            del state  # a legacy file is in the heap: read it again when its turn comes
        seen: dict[str, Path] = {}
        for e in self.entries:
            if e.name in seen:
                raise ConvertError("DuplicateTensor", f"tensor {e.name} appears in both {seen[e.name].name} and {e.file.name}")
            seen[e.name] = e.file

    def _iter(self):
        for path in self.files:
            state = self._states.pop(path, None) or load_state_dict(path)
            self._mapped = not _is_legacy(path)  # legacy (non-zip) files load into the heap: never madvise those
            self._file = (path, _mappings(path)) if self._mapped else None
            try:
                yield from state.items()
            finally:
                del state  # unmaps this shard before the next one is opened


    def release(self, piece: torch.Tensor) -> None:
        if getattr(self, "_mapped", False):
            release_pages(piece)

    def file_range(self, tensor: torch.Tensor) -> tuple[Path, int] | None:
        """Where a contiguous mmap-loaded tensor's bytes sit in its file (for an in-kernel copy):
        the mapping of that file holding the tensor's address, from /proc/self/maps."""
        if getattr(self, "_file", None) is None or not tensor.is_contiguous() or tensor.numel() == 0:
            return None
        path, mappings = self._file
        ptr, nbytes = tensor.data_ptr(), tensor.numel() * tensor.element_size()
        offset = next((ptr - start + file_offset for start, end, file_offset in mappings if start <= ptr and ptr + nbytes <= end), None)
        if offset is None or offset + nbytes > path.stat().st_size:
            return None
        probe = min(nbytes, 64)
        with open(path, "rb") as fh:  # belt and braces: the bytes there are the tensor's
            fh.seek(offset)
            if fh.read(probe) != tensor.reshape(-1).view(torch.uint8)[:probe].numpy().tobytes():
                return None
        return path, offset


def _mappings(path: Path) -> list[tuple[int, int, int]]:
    """``(start, end, file offset)`` of every mapping of ``path`` in this process."""
    real, out = os.path.realpath(path), []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].rstrip("\n") == real:
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    out.append((start, end, int(fields[2], 16)))
    except (OSError, ValueError):
        return []
    return out


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_MADV_DONTNEED = 4


def release_pages(tensor: torch.Tensor) -> None:
    """Drop the resident pages behind an mmap-loaded tensor (``madvise(MADV_DONTNEED)``).

    ``torch.load(mmap=True)`` maps the file privately and read-only in practice, so the pages are
    clean: the kernel simply re-reads them from the file if they are touched again. Without this a
    shard's pages stay in this process's RSS until the whole shard is unmapped.
    """
    libc = _libc()
    if libc is None or tensor.numel() == 0:
        return
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    start = (start + _PAGE - 1) // _PAGE * _PAGE  # only whole pages that belong to this tensor
    end = end // _PAGE * _PAGE
    if end > start:
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
