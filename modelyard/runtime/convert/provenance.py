"""``modelyard-provenance.json``: what was converted, how, and with which tools.

It is the last file written into the partial folder before it is renamed into place, so its
presence means the output is complete. A rerun whose recipe and inputs match is skipped.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

NAME = "modelyard-provenance.json"
_TOOLS = ("modelyard", "torch", "transformers", "safetensors")


class Hasher:
    """Hashes the input files in a background thread while conversion runs (hashlib drops the GIL)."""

    def __init__(self, files: list[Path]):
        self.files = files
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        self._futures: list[Future] = [self._pool.submit(sha256, f) for f in files]

    def result(self) -> list[dict]:
        out = [{"name": f.name, "bytes": f.stat().st_size, "sha256": fut.result()} for f, fut in zip(self.files, self._futures)]
        self._pool.shutdown()
        return out


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tool_versions(quantized: bool) -> dict[str, str]:
    names = _TOOLS + (("llmcompressor", "compressed-tensors") if quantized else ())
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "absent"
    return out


def input_fingerprint(files: list[Path]) -> list[dict]:
    """Cheap identity of the inputs for the idempotency check (names and sizes)."""
    return [{"name": f.name, "bytes": f.stat().st_size} for f in files]


def build(*, input_path: Path, fmt: str, inputs: list[dict], recipe: dict, outputs: list[Path]) -> dict:
    return {
        "input": {"path": str(input_path), "format": fmt, "files": inputs},
        "recipe": recipe,
        "output": {"files": [{"name": p.name, "bytes": p.stat().st_size} for p in outputs]},
        "tools": tool_versions(recipe.get("scheme") is not None),
        "createdAt": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write(folder: Path, record: dict) -> None:
    (folder / NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def read(folder: Path) -> dict | None:
    try:
        return json.loads((folder / NAME).read_text())
    except (OSError, ValueError):
        return None


def matches(record: dict | None, recipe: dict, files: list[Path]) -> bool:
    if not record or record.get("recipe") != recipe:
        return False
    have = [{"name": f["name"], "bytes": f["bytes"]} for f in record.get("input", {}).get("files", [])]
    return have == input_fingerprint(files)
