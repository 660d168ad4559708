"""An onnxruntime-genai export folder: is it one, and is it complete?

A folder is an ONNX export when it holds ``genai_config.json`` (what the onnxruntime-genai model
builder writes beside ``model.onnx``). ``check_folder`` refuses an incomplete one before anything
loads it, naming what is missing: the config, the graph it names, the external weight files the
graph points at (and their sizes), and a tokenizer. Shared by ``modelyard serve --engine
onnxruntime``, the convert step (after an export) and the download step (to report the format);
it imports no torch.
"""
from __future__ import annotations

import json
from pathlib import Path

from modelyard.runtime.errors import RuntimeStepError

from modelyard.runtime.formats import GENAI_CONFIG, is_onnx_folder  # noqa: F401 (re-exported)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class OnnxFolderError(RuntimeStepError):
    def __init__(self, message: str):
        super().__init__("IncompleteOnnxFolder", message)


def _genai_config(folder: Path) -> dict:
    path = folder / GENAI_CONFIG
    if not path.is_file():
        listing = ", ".join(sorted(p.name for p in folder.iterdir())[:12]) if folder.is_dir() else "nothing"
        raise OnnxFolderError(f"{folder} is not an onnxruntime-genai export: no {GENAI_CONFIG} (it holds {listing}); "
                              "export one with `modelyard convert --engine onnxruntime` or "
                              "`python -m onnxruntime_genai.models.builder`")
    try:
        config = json.loads(path.read_text())
        config["model"]["decoder"]["filename"]
    except (ValueError, KeyError, TypeError) as exc:
        raise OnnxFolderError(f"{path} is not a valid genai config (needs model.decoder.filename): {exc!r}") from None
    return config


def _external_files(graph: Path) -> dict[str, int]:
    """{file name: bytes the graph needs from it} for weights stored outside the .onnx file."""
    import onnx

    try:
        proto = onnx.load(str(graph), load_external_data=False)
    except Exception as exc:  # a truncated or foreign file
        raise OnnxFolderError(f"{graph.name} is not a readable ONNX graph: {exc}") from None
    need: dict[str, int] = {}
    for tensor in proto.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        need[info["location"]] = max(need.get(info["location"], 0), end)
    return need


def check_folder(path: str | Path) -> dict:
    """The export's summary (graph, files, bytes, context length), or OnnxFolderError saying what is missing."""
    folder = Path(path)
    config = _genai_config(folder)
    graph = folder / config["model"]["decoder"]["filename"]
    if not graph.is_file():
        raise OnnxFolderError(f"{folder}: {GENAI_CONFIG} names the graph {graph.name}, which is not there")
    problems = []
    for name, size in sorted(_external_files(graph).items()):
        data = folder / name
        if not data.is_file():
            problems.append(f"{name} (external weights of {graph.name}) is missing")
        elif data.stat().st_size < size:
            problems.append(f"{name} is truncated: {data.stat().st_size} bytes, the graph needs {size}")
    if not any((folder / t).is_file() for t in TOKENIZER_FILES):
        problems.append(f"no tokenizer ({' or '.join(TOKENIZER_FILES)})")
    if problems:
        raise OnnxFolderError(f"{folder} is an incomplete ONNX export: " + "; ".join(problems))
    files = [p for p in folder.iterdir() if p.is_file()]
    return {"graph": graph.name, "files": len(files), "bytes": sum(p.stat().st_size for p in files),
            "contextLength": config["model"].get("context_length"), "type": config["model"].get("type")}
