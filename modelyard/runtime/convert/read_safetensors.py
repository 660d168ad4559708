"""Read safetensors shards tensor by tensor (``safe_open``), one file open at a time."""
from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from modelyard.runtime.convert.source import Entry, TensorSource
from modelyard.runtime.st_header import read_header
from modelyard.runtime.errors import ConvertError


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError for every header problem
        raise ConvertError(
            "CorruptFile", f"{path.name} is not a readable safetensors file (truncated or corrupted?): {exc}"
        ) from None


class SafetensorsSource(TensorSource):
    """Header checked by safetensors; data read with plain ``readinto`` in file order, one tensor at a
    time, so no memory map keeps a whole shard resident."""

    format = "safetensors"

    def __init__(self, files: list[Path]):
        super().__init__()
        self.files = files
        self.entries = []
        self._offsets: dict[tuple[Path, str], tuple[int, int]] = {}
        for path in files:
            with _open(path):
                pass  # validates the header (and that the file is long enough for it)
            header, data_start = _header(path)
            size = path.stat().st_size
            for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
                begin, end = info["data_offsets"]
                if data_start + end > size:
                    raise ConvertError("CorruptFile", f"{path.name} is truncated: tensor {name} ends at byte {data_start + end} but the file has {size}")
                self._offsets[(path, name)] = (data_start + begin, end - begin)
                self.entries.append(Entry(name, tuple(info["shape"]), _dtype(info["dtype"], path), path))

    def _iter(self):
        import torch

        by_file: dict[Path, list[Entry]] = {}
        for e in self.entries:
            by_file.setdefault(e.file, []).append(e)
        for path in self.files:
            with open(path, "rb", buffering=0) as fh:
                for e in by_file.get(path, []):
                    start, length = self._offsets[(path, e.name)]
                    t = torch.empty(e.shape, dtype=e.dtype)
                    if length:
                        fh.seek(start)
                        got = fh.readinto(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
                        if got != length:
                            raise ConvertError("CorruptFile", f"{path.name}: tensor {e.name} is cut short ({got} of {length} bytes)")
                    yield e.name, t


def _header(path: Path) -> tuple[dict, int]:
    return read_header(path, lambda message: ConvertError("CorruptFile", message))


_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}


def _dtype(code: str, path: Path):
    import torch

    name = _DTYPES.get(code)
    if name is None:
        raise ConvertError("UnsupportedDtype", f"{path.name} holds tensors of dtype {code}, which modelyard does not convert")
    return getattr(torch, name)
