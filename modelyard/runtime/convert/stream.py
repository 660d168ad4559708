"""Weights in any supported format → safetensors shards in ``dest``, one tensor in memory at a time.

Safetensors that need no change are hardlinked (or copied), never rewritten. Everything else is
checked against the architecture in ``dest/config.json`` before a byte is written, then streamed
through the cast into the shard writer.
"""
from __future__ import annotations

import json
from pathlib import Path

from modelyard.runtime.convert.cast import cast_entry, needs_cast
from modelyard.runtime.formats import Detected
from modelyard.runtime.convert.expected import Expected, align, expected_for
from modelyard.runtime.convert.publish import link_or_copy
from modelyard.runtime.convert.source import TensorSource
from modelyard.runtime.convert.writer import MAX_SHARD_BYTES, ShardWriter, nbytes
from modelyard.runtime.errors import ConvertError
from modelyard.runtime.progress import Progress


def open_source(found: Detected, dest: Path) -> TensorSource:
    if found.format == "safetensors":
        from modelyard.runtime.convert.read_safetensors import SafetensorsSource

        return SafetensorsSource(found.files)
    if found.format == "pytorch":
        from modelyard.runtime.convert.read_pytorch import PytorchSource

        return PytorchSource(found.files)
    if found.format == "torchscript":
        if not (dest / "config.json").is_file():
            raise ConvertError("MissingConfig", f"{found.files[0].name} is TorchScript: pass the Hugging Face config.json of its architecture with --config")
        from modelyard.runtime.convert.read_torchscript import torchscript_source

        return torchscript_source(found.files[0])
    from modelyard.runtime.convert.read_gguf import GGUFSource, load_gguf_tokenizer

    source = GGUFSource(found.files[0])
    if not (dest / "config.json").is_file():
        source.config.save_pretrained(str(dest))
        source.model().generation_config.save_pretrained(str(dest))
        _drop_gguf_markers(dest / "config.json")
    if not (dest / "tokenizer_config.json").is_file():
        tok = load_gguf_tokenizer(found.files[0])
        if tok is not None:
            tok.save_pretrained(str(dest))
    return source


def write_weights(found: Detected, dest: Path, dtype, max_shard_bytes: int = MAX_SHARD_BYTES) -> Expected:
    """Write ``found``'s weights into ``dest`` (which already holds config.json); return what was expected."""
    source = open_source(found, dest)
    expected = expected_for(dest)
    label = ", ".join(f.name for f in found.files[:3]) + (" ..." if len(found.files) > 3 else "")
    align(source, expected, label)
    renamed = any(source.rename(e.name) != e.name for e in source.entries) or source.dropped
    if found.format == "safetensors" and not needs_cast(source.entries, dtype) and not renamed:
        _link_through(found, dest)
        return expected
    entries = [cast_entry(e, dtype) for e in source.planned()]
    progress = Progress(sum(nbytes(e) for e in entries), step="convert")
    writer = ShardWriter(dest, entries, max_shard_bytes, on_bytes=progress.advance)
    try:
        for name, tensor in source.tensors():
            writer.write(name, tensor, release=source.release, file_range=source.file_range)
        writer.close()
    finally:
        writer.abort()
        progress.close()
    return expected


def _link_through(found: Detected, dest: Path) -> None:
    progress = Progress(sum(f.stat().st_size for f in found.files), step="convert")
    for f in found.files:
        link_or_copy(f, dest / f.name)
        progress.advance(f.stat().st_size)
    if found.index is not None:
        link_or_copy(found.index, dest / found.index.name)
    progress.close()


def _drop_gguf_markers(path: Path) -> None:
    """The loaded config remembers it came from GGUF; the output is plain safetensors."""
    cfg = json.loads(path.read_text())
    if (cfg.get("quantization_config") or {}).get("quant_method") == "gguf":
        del cfg["quantization_config"]
    cfg.pop("_model_name_or_path", None)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
