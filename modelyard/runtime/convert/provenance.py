"""``modelyard-provenance.json``: what was converted, how, and with which tools.

It is the last file written into the partial folder before it is renamed into place, so its
presence means the output is complete. A rerun whose recipe and inputs match is skipped.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

NAME = "modelyard-provenance.json"
DOWNLOAD_MANIFEST = "modelyard-manifest.json"  # written by `modelyard download`
_TOOLS = ("modelyard", "torch", "transformers", "safetensors")


class Hasher:
    """sha256 of every input file, computed in a background thread while conversion runs (hashlib
    drops the GIL) — or taken from the download step's ``modelyard-manifest.json`` when it lists
    the file with the same size and the file is not newer than the manifest (the download verified
    that checksum against the source)."""

    def __init__(self, files: list[Path], root: Path | None = None):
        self.files = files
        self.known = _manifest_hashes(root, files) if root is not None else {}
        todo = [f for f in files if f not in self.known]
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sha256")  # two files at once
        self._futures: dict[Path, Future] = {f: self._pool.submit(sha256, f, stop=self._stop) for f in todo}

    def cancel(self) -> None:
        """The conversion failed: stop hashing now rather than at interpreter exit."""
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def result(self) -> list[dict]:
        out = []
        for f in self.files:
            if f in self.known:
                out.append({"name": f.name, "bytes": f.stat().st_size, "sha256": self.known[f], "sha256From": DOWNLOAD_MANIFEST})
            else:
                out.append({"name": f.name, "bytes": f.stat().st_size, "sha256": self._futures[f].result()})
        self._pool.shutdown()
        return out


def _manifest_hashes(root: Path, files: list[Path]) -> dict[Path, str]:
    manifest = Path(root) / DOWNLOAD_MANIFEST
    try:
        record = json.loads(manifest.read_text())
        stamp = manifest.stat().st_mtime
    except (OSError, ValueError):
        return {}
    listed = {e.get("path"): e for e in record.get("files", []) if isinstance(e, dict)}
    out = {}
    for f in files:
        e = listed.get(f.relative_to(root).as_posix()) if f.is_relative_to(root) else None
        st = f.stat()
        if e and e.get("sha256") and e.get("size") == st.st_size and st.st_mtime <= stamp:
            out[f] = str(e["sha256"]).lower()
    return out


def sha256(path: Path, chunk: int = 1 << 20, stop: threading.Event | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            if stop is not None and stop.is_set():
                return ""
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
