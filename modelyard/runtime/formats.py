"""Which weight format a folder or file holds, from the files themselves (magic bytes, not names alone).

Shared by `modelyard convert` and `modelyard download` (which reports it to the operator); it
imports no torch, so the download image can use it.

``detect(path, requested)`` returns a :class:`Detected` naming the format and the weight files in
load order. An explicit ``requested`` format is checked against the files: asking for ``gguf`` on a
folder of safetensors is an error, not a silent misread.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from modelyard.runtime.errors import ConvertError

FORMATS = ("safetensors", "pytorch", "torchscript", "gguf")
SUPPORTED = "safetensors folders, PyTorch state dicts (pytorch_model.bin, sharded .bin with index, .pt/.pth), TorchScript archives, GGUF"
_PICKLE_EXT = (".bin", ".pt", ".pth")


@dataclass
class Detected:
    format: str
    files: list[Path]
    root: Path  # folder holding config.json / tokenizer files (the input itself or its parent)
    index: Path | None = None
    notes: list[str] = field(default_factory=list)


def detect(path: str | Path, requested: str = "auto") -> Detected:
    path = Path(path)
    if requested == "onnx":
        raise ConvertError("UnsupportedFormat", "ONNX graphs cannot be converted into Hugging Face weights (the weights live "
                           f"inside an exported graph); supported inputs: {SUPPORTED}")
    if not path.exists():
        raise ConvertError("InputNotFound", f"input {path} does not exist")
    found = _detect_file(path) if path.is_file() else _detect_dir(path)
    if requested not in ("auto", found.format):
        raise ConvertError(
            "FormatMismatch",
            f"--format {requested} was asked for, but {path} holds {found.format} weights ({_names(found.files)})",
        )
    return found


def _detect_dir(path: Path) -> Detected:
    for index_name, fmt in (("model.safetensors.index.json", "safetensors"), ("pytorch_model.bin.index.json", "pytorch")):
        index = path / index_name
        if index.is_file():
            return Detected(fmt, _index_files(index), path, index=index)
    st = sorted(path.glob("*.safetensors"))
    if st:
        return Detected("safetensors", st, path)
    candidates = sorted(p for p in path.iterdir() if p.is_file() and _kind(p) is not None)
    kinds = {_kind(p) for p in candidates}
    if len(kinds) == 1:
        fmt = kinds.pop()
        if fmt == "gguf" and len(candidates) > 1:
            raise ConvertError("AmbiguousInput", f"{path} holds several GGUF files ({_names(candidates)}); pass one with --input FILE")
        if fmt in ("torchscript",) and len(candidates) > 1:
            raise ConvertError("AmbiguousInput", f"{path} holds several TorchScript archives ({_names(candidates)}); pass one with --input FILE")
        return Detected(fmt, candidates, path)
    if len(kinds) > 1:
        raise ConvertError("AmbiguousInput", f"{path} mixes weight formats ({_names(candidates)}); pass one file with --input or --format")
    listing = _names(sorted(path.iterdir())) or "nothing"
    raise ConvertError("UnsupportedFormat", f"no weights in a supported format found in {path} (it holds {listing}); supported: {SUPPORTED}")


def _detect_file(path: Path) -> Detected:
    kind = _kind(path)
    if kind is None:
        raise ConvertError("UnsupportedFormat", f"{path.name} is not in a supported format ({_why(path)}); supported: {SUPPORTED}")
    if path.name.endswith(".index.json"):
        return Detected(kind, _index_files(path), path.parent, index=path)
    return Detected(kind, [path], path.parent)


def _kind(path: Path) -> str | None:
    name = path.name
    if name.endswith(".index.json"):
        return "safetensors" if "safetensors" in name else ("pytorch" if ".bin" in name else None)
    head = _head(path, 8)
    if head[:4] == b"GGUF":
        return "gguf"
    if name.endswith(".safetensors"):
        return "safetensors"
    if head[:2] == b"PK":
        return _zip_kind(path)
    if name.endswith(_PICKLE_EXT) and head[:1] == b"\x80":
        return "pytorch"  # legacy (non-zip) torch.save format
    return None


def _zip_kind(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile:
        return None
    if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        return "pytorch"
    return None


def _why(path: Path) -> str:
    if path.suffix == ".t7":
        return "Lua Torch .t7 files cannot be read by PyTorch 2; re-export the weights from Lua Torch or load them in torchfile and save a state_dict"
    if path.suffix == ".onnx":
        return "ONNX graphs are served as-is, not converted to Hugging Face weights"
    return "unrecognised file contents"


def _index_files(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError) as exc:
        raise ConvertError("BadIndex", f"{index.name} is not a valid shard index (needs a 'weight_map' object): {exc}") from None
    if not isinstance(weight_map, dict):
        raise ConvertError("BadIndex", f"{index.name}: 'weight_map' must be an object of tensor name -> shard file")
    root = index.parent.resolve()
    for name in dict.fromkeys(weight_map.values()):
        target = (index.parent / str(name)).resolve()
        if not isinstance(name, str) or name.startswith("/") or ".." in Path(name).parts or root not in target.parents:
            raise ConvertError("BadIndex", f"{index.name}: weight_map entry {name!r} points outside {index.parent}; "
                               "shard files must be plain names in the same folder")
    files = [index.parent / f for f in dict.fromkeys(weight_map.values())]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ConvertError("MissingShard", f"{index.name} names shard(s) that are not in {index.parent}: {', '.join(missing)}")
    return files


def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _names(paths) -> str:
    names = [p.name for p in paths]
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
