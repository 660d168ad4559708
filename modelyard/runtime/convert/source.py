"""What every reader hands the writer: tensor metadata up front, tensors one at a time.

A reader lists :class:`Entry` (name, shape, dtype) for every tensor without reading the data, so
the writer can lay out output shards before any byte is copied; then ``tensors()`` yields
``(name, tensor)`` in the same order, holding at most one input file open at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch


@dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path | None = None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class TensorSource:
    """Base reader: subclasses set ``entries`` and implement ``_iter()``."""

    format = "?"
    entries: list[Entry]

    def __init__(self):
        self.rename: Callable[[str], str] = lambda n: n
        self.dropped: set[str] = set()

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in self._iter():
            if name in self.dropped:
                continue
            yield self.rename(name), tensor

    def planned(self) -> list[Entry]:
        """Entries after renames and drops (what the output will hold)."""
        return [Entry(self.rename(e.name), e.shape, e.dtype, e.file) for e in self.entries if e.name not in self.dropped]

    def _iter(self) -> Iterator[tuple[str, torch.Tensor]]:
        raise NotImplementedError

    def file_range(self, tensor: torch.Tensor) -> tuple[Path, int] | None:
        """``(file, offset)`` holding this yielded tensor's exact bytes, when the reader knows it."""
        return None

    def release(self, piece: torch.Tensor) -> None:
        """Called once ``piece`` (a view of a yielded tensor) is written; readers backed by a
        memory map drop its pages here."""

    def model(self):
        """A loaded transformers model, for readers that only exist as one (GGUF); else None."""
        return None


class StateDictSource(TensorSource):
    """A state dict already in memory (TorchScript, a dequantized GGUF model)."""

    def __init__(self, state: dict[str, torch.Tensor], fmt: str, file: Path):
        super().__init__()
        self.format = fmt
        self._state = state
        self.entries = [Entry(k, tuple(v.shape), v.dtype, file) for k, v in state.items()]

    def _iter(self):
        yield from self._state.items()
