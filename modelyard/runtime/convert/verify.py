"""Check a finished folder before it is published: every tensor readable, shapes as config.json says.

Quantized (compressed-tensors) checkpoints store packed weights and scales under other names, so
for them only readability, the index and ``quantization_config`` are checked.
"""
from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from modelyard.runtime.convert.expected import Expected
from modelyard.runtime.convert.writer import INDEX
from modelyard.runtime.errors import ConvertError


def verify(folder: Path, expected: Expected | None) -> list[Path]:
    """Return the weight files; raise ConvertError naming the first problem found."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ConvertError("VerifyFailed", f"the converted folder has no config.json ({folder})")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConvertError("VerifyFailed", f"the converted folder holds no safetensors files ({folder})")
    _check_index(folder, files)
    found: dict[str, tuple[int, ...]] = {}
    for path in files:
        found.update(_read_all(path))
    if expected is not None:
        _check_shapes(found, expected)
    return files


def _read_all(path: Path) -> dict[str, tuple[int, ...]]:
    """Parse the header with safetensors, check the data covers every tensor exactly, and read each
    tensor's first and last bytes back from disk (an I/O error or short file shows up here).

    Re-reading every byte would double the I/O and catch nothing more: safetensors has no checksums.
    """
    shapes = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                shapes[name] = tuple(f.get_slice(name).get_shape())
    except Exception as exc:
        raise ConvertError("VerifyFailed", f"output shard {path.name} cannot be read back: {exc}") from None
    size = path.stat().st_size
    with open(path, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_len))
        header.pop("__metadata__", None)
        base = 8 + header_len
        end = max((v["data_offsets"][1] for v in header.values()), default=0)
        if base + end != size:
            raise ConvertError("VerifyFailed", f"output shard {path.name} is {size} bytes but its header describes {base + end}")
        for name, info in header.items():
            begin, stop = info["data_offsets"]
            for at in {begin, stop - 1} if stop > begin else ():
                fh.seek(base + at)
                if len(fh.read(1)) != 1:
                    raise ConvertError("VerifyFailed", f"output shard {path.name}: tensor {name} cannot be read at byte {base + at}")
    return shapes


def _check_index(folder: Path, files: list[Path]) -> None:
    index = folder / INDEX
    if len(files) == 1 and not index.exists():
        return
    if not index.exists():
        raise ConvertError("VerifyFailed", f"{len(files)} shards but no {INDEX}")
    named = set(json.loads(index.read_text())["weight_map"].values())
    present = {f.name for f in files}
    if named != present:
        raise ConvertError("VerifyFailed", f"{INDEX} names {sorted(named)} but the folder holds {sorted(present)}")


def _check_shapes(found: dict[str, tuple[int, ...]], expected: Expected) -> None:
    wrong = [f"{n} {list(s)} != {list(expected.shapes[n])}" for n, s in found.items() if n in expected.shapes and s != expected.shapes[n]]
    missing = sorted(set(expected.shapes) - set(found) - expected.optional)
    unexpected = sorted(set(found) - set(expected.shapes))
    if wrong or missing or unexpected:
        raise ConvertError(
            "VerifyFailed",
            "the written checkpoint does not match config.json: "
            + "; ".join(filter(None, [
                ("shapes: " + ", ".join(wrong[:5])) if wrong else "",
                ("missing: " + ", ".join(missing[:5])) if missing else "",
                ("unexpected: " + ", ".join(unexpected[:5])) if unexpected else "",
            ])),
        )


def check_quantized(folder: Path) -> None:
    cfg = json.loads((Path(folder) / "config.json").read_text())
    if "quantization_config" not in cfg:
        raise ConvertError("VerifyFailed", "the quantized checkpoint's config.json has no quantization_config")
