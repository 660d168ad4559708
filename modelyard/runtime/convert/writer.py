"""Write safetensors shards as tensors stream in, never holding more than one tensor.

The layout (which tensor goes in which shard, at which offset) is planned from the readers'
metadata first, so each shard's header is written before its data and every tensor's bytes go
straight to disk. Shards stay under ``max_shard_bytes`` (5 GB, the Hub's limit); more than one
shard gets ``model.safetensors.index.json``. The format is the documented safetensors layout:
8-byte little-endian header length, a JSON header padded to 8 bytes, then the raw data.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from modelyard.runtime.convert.cast import cast_chunks
from modelyard.runtime.convert.source import Entry
from modelyard.runtime.errors import ConvertError

MAX_SHARD_BYTES = 5 * 1000**3
INDEX = "model.safetensors.index.json"
_CODES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}


@dataclass
class Shard:
    entries: list[Entry]
    file: str = ""

    @property
    def nbytes(self) -> int:
        return sum(nbytes(e) for e in self.entries)


def nbytes(e: Entry) -> int:
    return e.numel * e.dtype.itemsize


def plan_shards(entries: list[Entry], max_shard_bytes: int = MAX_SHARD_BYTES) -> list[Shard]:
    shards: list[Shard] = [Shard([])]
    for e in entries:
        if shards[-1].entries and shards[-1].nbytes + nbytes(e) > max_shard_bytes:
            shards.append(Shard([]))
        shards[-1].entries.append(e)
    n = len(shards)
    for i, s in enumerate(shards):
        s.file = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
    return shards


class ShardWriter:
    """``write(name, tensor)`` in plan order; ``close()`` writes the index. ``on_bytes`` reports progress."""

    def __init__(self, out: Path, entries: list[Entry], max_shard_bytes: int = MAX_SHARD_BYTES, on_bytes=None):
        self.out = Path(out)
        self.shards = plan_shards(entries, max_shard_bytes)
        self._order = [(s, e) for s in self.shards for e in s.entries]
        self._pos = 0
        self._fh = None
        self._on_bytes = on_bytes or (lambda n: None)

    def write(self, name: str, tensor: torch.Tensor, release=None, file_range=None) -> None:
        """Write ``tensor``: copied in-kernel from its input file when ``file_range(tensor)`` knows where
        its bytes are and no cast is needed; else cast chunk by chunk, calling ``release(piece)`` after each."""
        if self._pos >= len(self._order):
            raise ConvertError("WriteOrder", f"tensor {name} was not planned for the output")
        shard, entry = self._order[self._pos]
        if name != entry.name or tuple(tensor.shape) != entry.shape:
            raise ConvertError("WriteOrder", f"expected tensor {entry.name} {list(entry.shape)}, got {name} {list(tensor.shape)}")
        if entry is shard.entries[0]:
            self._open(shard)
        where = file_range(tensor) if file_range is not None and tensor.dtype == entry.dtype else None
        if where is None or not self._copy_range(*where, nbytes(entry)):
            self._write_chunks(tensor, entry, release)
        self._pos += 1
        if entry is shard.entries[-1]:
            self._fh.close()
            self._fh = None

    def _copy_range(self, path: Path, offset: int, length: int) -> bool:
        """In-kernel copy (``copy_file_range``, what ``cp`` uses): the bytes never enter this process.
        False (and nothing written) where the filesystems do not support it."""
        fd = self._fh.fileno()
        start = os.lseek(fd, 0, os.SEEK_CUR)
        try:
            with open(path, "rb", buffering=0) as src:
                done = 0
                while done < length:
                    n = os.copy_file_range(src.fileno(), fd, min(length - done, 1 << 30), offset + done)
                    if n == 0:
                        raise ConvertError("CorruptFile", f"{path.name} ended while copying {length} bytes at offset {offset}")
                    done += n
                    self._on_bytes(n)
        except OSError:  # EXDEV, EOPNOTSUPP, ENOSYS...: rewind and let the caller write the bytes
            os.lseek(fd, start, os.SEEK_SET)
            os.ftruncate(fd, start)
            return False
        return True

    def _write_chunks(self, tensor: torch.Tensor, entry: Entry, release) -> None:
        for piece, data in cast_chunks(tensor, entry.dtype):
            self._fh.write(memoryview(data))
            self._on_bytes(data.nbytes)
            if release is not None:
                release(piece)

    def _open(self, shard: Shard) -> None:
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for e in shard.entries:
            header[e.name] = {"dtype": _CODES[e.dtype], "shape": list(e.shape), "data_offsets": [offset, offset + nbytes(e)]}
            offset += nbytes(e)
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._fh = open(self.out / shard.file, "wb", buffering=0)  # raw: writes and copy_file_range share the position
        self._fh.write(struct.pack("<Q", len(raw)) + raw)

    def close(self) -> list[str]:
        if self._pos != len(self._order):
            missing = [e.name for _, e in self._order[self._pos:]]
            raise ConvertError("IncompleteWrite", f"{len(missing)} tensor(s) never arrived: {', '.join(missing[:5])}")
        if len(self.shards) > 1:
            weight_map = {e.name: s.file for s in self.shards for e in s.entries}
            index = {"metadata": {"total_size": sum(s.nbytes for s in self.shards)}, "weight_map": weight_map}
            (self.out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return [s.file for s in self.shards]

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
