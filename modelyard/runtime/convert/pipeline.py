"""One conversion: detect → read → (align, cast | merge, quantize) → write → verify → publish.

Everything is written into ``<output>.partial-<pid>`` and renamed into place only after
verification; ``modelyard-provenance.json`` is written last. A rerun with the same recipe and
inputs finds the provenance and returns at once ("already converted").
"""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from modelyard.runtime.convert import provenance, publish
from modelyard.runtime.convert.cast import target_dtype
from modelyard.runtime.formats import Detected, detect
from modelyard.runtime.convert.expected import expected_for
from modelyard.runtime.convert.quantize import QUANT_PRECISIONS, recipe_for
from modelyard.runtime.convert.stream import write_weights
from modelyard.runtime.convert.writer import MAX_SHARD_BYTES
from modelyard.runtime.convert.verify import check_quantized, verify
from modelyard.runtime.lease import Lease
from modelyard.runtime.errors import ConvertError

PRECISIONS = ("auto", "float32", "float16", "bfloat16", "fp8", "int8", "int4")
SIDE_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
    "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json",
    "preprocessor_config.json",
)


@dataclass
class Request:
    input: Path
    output: Path
    format: str = "auto"
    precision: str = "auto"
    config: Path | None = None
    adapters: list[str] = field(default_factory=list)
    scheme: str | None = None
    calibration: str | None = None
    engine: str = "vllm"
    max_shard_bytes: int = MAX_SHARD_BYTES


def convert(req: Request, log=None) -> dict:
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if req.precision not in PRECISIONS:
        raise ConvertError("BadPrecision", f"--precision {req.precision} is not one of {', '.join(PRECISIONS)}")
    found = detect(req.input, req.format)
    recipe = make_recipe(req, found)
    output = Path(req.output)
    if provenance.matches(provenance.read(output), recipe, found.files):
        log(f"already converted: {output} holds this recipe for these inputs")
        return summary(output, recipe, skipped=True)
    if recipe.get("note"):
        log(recipe["note"])
    output.parent.mkdir(parents=True, exist_ok=True)
    with Lease(output.parent / f"{output.name}.lease", on_wait=lambda held: _waiting(held, output)):
        if provenance.matches(provenance.read(output), recipe, found.files):  # the pod we waited for did it
            log(f"already converted: {output} holds this recipe for these inputs")
            return summary(output, recipe, skipped=True)
        return _convert_locked(req, found, recipe, output, log)


def _waiting(held: dict, output: Path) -> None:
    """Said once per holder, as a structured line the operator shows (WaitingForSharedConvert)."""
    print(json.dumps({"event": "waiting", "step": "convert", "reason": "WaitingForSharedConvert",
                      "message": f"{held.get('owner') or 'another pod'} is converting into {output}; waiting for it"}),
          file=sys.stderr, flush=True)


def _convert_locked(req: Request, found: Detected, recipe: dict, output: Path, log) -> dict:
    partial = publish.partial_dir(output)
    hasher = provenance.Hasher(found.files, found.root)
    try:
        _build(req, found, recipe, partial, log)
        record = provenance.build(input_path=Path(req.input), fmt=found.format, inputs=hasher.result(),
                                  recipe=recipe, outputs=sorted(partial.glob("*.safetensors")))
        provenance.write(partial, record)
        publish.publish(partial, output)
    except BaseException:
        hasher.cancel()
        publish.discard(partial)
        raise
    log(f"converted {found.format} → {output} ({_describe(recipe)})")
    return summary(output, recipe)


def make_recipe(req: Request, found: Detected) -> dict:
    from modelyard.runtime.convert.merge import adapter_fingerprints

    recipe: dict = {"format": found.format, "precision": req.precision, "engine": req.engine, "scheme": None}
    if req.precision in QUANT_PRECISIONS and (req.engine == "vllm" or req.precision == "fp8"):
        recipe.update(recipe_for(req.precision, req.scheme, req.calibration))
        recipe["calibrationDataset"] = req.calibration
    elif req.precision in QUANT_PRECISIONS:
        recipe["note"] = (f"--precision {req.precision} with --engine accelerate: no conversion, bitsandbytes quantizes "
                          "at load time; weights are passed through as stored")
    elif req.scheme or req.calibration:
        raise ConvertError("BadScheme", "--scheme/--calibration-dataset need --precision int8, int4 or fp8")
    if req.adapters:
        recipe["adapters"] = adapter_fingerprints(req.adapters)
    if req.config:
        recipe["config"] = provenance.sha256(Path(req.config))
    return recipe


def _build(req: Request, found: Detected, recipe: dict, partial: Path, log) -> None:
    _copy_side_files(found.root, partial, req.config)
    dtype = target_dtype(req.precision)
    if recipe["scheme"] is None and not req.adapters:
        expected = write_weights(found, partial, dtype, req.max_shard_bytes)
        _set_config_dtype(partial, dtype)
        verify(partial, expected)
        return
    stage = partial / ".stage"
    stage.mkdir()
    _copy_side_files(found.root, stage, req.config)
    write_weights(found, stage, dtype, req.max_shard_bytes)
    _set_config_dtype(stage, dtype)
    _load_transform_save(req, recipe, stage, partial, dtype, log)
    shutil.rmtree(stage)
    if recipe["scheme"]:
        verify(partial, None)  # packed weights and scales: other names than the float model's
        check_quantized(partial)
    else:
        verify(partial, expected_for(partial))


def _load_transform_save(req: Request, recipe: dict, stage: Path, partial: Path, dtype, log) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(stage), dtype=dtype or "auto")
    if req.adapters:
        from modelyard.runtime.convert.merge import merge_adapters

        log(f"merging {len(req.adapters)} adapter(s)")
        model = merge_adapters(model, req.adapters)
    tokenizer = None
    if (stage / "tokenizer_config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(str(stage))
    if recipe["scheme"]:
        from modelyard.runtime.convert.quantize import quantize

        log(f"quantizing with llmcompressor {recipe['modifier']} {recipe['scheme']}")
        with torch.no_grad():
            quantize(model, tokenizer, recipe, partial, req.calibration, req.max_shard_bytes)
    else:
        model.save_pretrained(str(partial), max_shard_size=req.max_shard_bytes)
    for name in SIDE_FILES:
        if (stage / name).is_file() and not (partial / name).exists():
            shutil.copy2(stage / name, partial / name)


def _copy_side_files(root: Path, dest: Path, config: Path | None) -> None:
    if config is not None:
        if not Path(config).is_file():
            raise ConvertError("MissingConfig", f"--config {config} does not exist")
        shutil.copy2(config, dest / "config.json")
    elif (root / "config.json").is_file():
        shutil.copy2(root / "config.json", dest / "config.json")
    for name in SIDE_FILES:
        if (root / name).is_file():
            shutil.copy2(root / name, dest / name)


def _set_config_dtype(folder: Path, dtype) -> None:
    path = folder / "config.json"
    if dtype is None or not path.is_file():
        return
    cfg = json.loads(path.read_text())
    name = str(dtype).removeprefix("torch.")
    cfg["dtype"] = name
    if "torch_dtype" in cfg:
        cfg["torch_dtype"] = name
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def summary(output: Path, recipe: dict, skipped: bool = False) -> dict:
    files = sorted(p for p in Path(output).iterdir() if p.is_file())
    recipe = {k: v for k, v in recipe.items() if k != "note"}
    out = {"output": str(output), "recipe": recipe, "files": len(files), "bytes": sum(p.stat().st_size for p in files)}
    if skipped:
        out["skipped"] = True
    return out


def _describe(recipe: dict) -> str:
    parts = [f"precision {recipe['precision']}"]
    if recipe["scheme"]:
        parts.append(f"{recipe['modifier']} {recipe['scheme']}")
    if recipe.get("adapters"):
        parts.append(f"{len(recipe['adapters'])} adapter(s) merged")
    return ", ".join(parts)


__all__ = ["Request", "convert"]
