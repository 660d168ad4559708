"""Read safetensors shards tensor by tensor (``safe_open``), one file open at a time."""
from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from modelyard.runtime.convert.source import Entry, TensorSource
from modelyard.runtime.errors import ConvertError


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError for every header problem
        raise ConvertError(
            "CorruptFile", f"{path.name} is not a readable safetensors file (truncated or corrupted?): {exc}"
        ) from None


class SafetensorsSource(TensorSource):
    format = "safetensors"

    def __init__(self, files: list[Path]):
        super().__init__()
        self.files = files
        self.entries = []
        for path in files:
            with _open(path) as f:
                for name in f.keys():
                    sl = f.get_slice(name)
                    self.entries.append(Entry(name, tuple(sl.get_shape()), _dtype(sl.get_dtype(), path), path))

    def _iter(self):
        for path in self.files:
            with _open(path) as f:
                for name in f.keys():
                    try:
                        yield name, f.get_tensor(name)
                    except Exception as exc:
                        raise ConvertError("CorruptFile", f"{path.name}: tensor {name} cannot be read: {exc}") from None


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
