"""`modelyard convert --engine onnxruntime`: a checkpoint → an onnxruntime-genai export folder.

Steps: (1) a Hugging Face safetensors folder to export from — the input itself, or one made by the
ordinary conversion when the input is another format or adapters are merged; (2) the
onnxruntime-genai model builder (``python -m onnxruntime_genai.models.builder``), in a child
process; (3) the folder check (``onnx_folder.check_folder``); (4) the parity gate against
transformers (``onnx_parity.gate``); (5) provenance (inputs, recipe, builder and runtime versions,
parity report) and an atomic rename into place. Cached like every conversion: a rerun with the
same recipe and inputs returns at once.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from modelyard.runtime.convert import onnx_parity, provenance, publish
from modelyard.runtime.errors import ConvertError
from modelyard.runtime.formats import Detected, detect
from modelyard.runtime.onnx_folder import check_folder, is_onnx_folder

# modelyard precision → the builder's -p. fp8 has no ONNX Runtime CPU kernel; auto is fp32 on CPU
# (ONNX Runtime's CPU kernels are fastest and exact in fp32) and fp16 on CUDA.
BUILDER_PRECISION = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "int8": "int8", "int4": "int4"}
DEVICES = ("cpu", "cuda")
TOOLS = ("onnxruntime-genai", "onnxruntime", "onnx", "onnx-ir")
SIDE_FILES = ("config.json", "generation_config.json")


def resolve_precision(precision: str, device: str) -> str:
    if precision == "auto":
        return "float16" if device == "cuda" else "float32"
    if precision not in BUILDER_PRECISION:
        raise ConvertError("BadPrecision", f"--precision {precision} cannot be exported for the onnxruntime engine; "
                           f"use one of auto, {', '.join(BUILDER_PRECISION)}")
    if precision in ("float16", "bfloat16") and device == "cpu":
        raise ConvertError("BadPrecision", f"--precision {precision}: 16-bit float ONNX exports run only on the CUDA "
                           "execution provider (onnxruntime's CPU kernels fail on them); on CPU use float32 or int4, "
                           "or export with --device cuda for gpus >= 1")
    return precision


def make_recipe(req, found: Detected) -> dict:
    from modelyard.runtime.convert.merge import adapter_fingerprints

    device = getattr(req, "device", "cpu") or "cpu"
    if device not in DEVICES:
        raise ConvertError("BadDevice", f"--device {device} is not one of {', '.join(DEVICES)}")
    if req.scheme or req.calibration:
        raise ConvertError("BadScheme", "--scheme/--calibration-dataset are llmcompressor options; the onnxruntime "
                           "export quantizes int4/int8 itself (RTN, block 32)")
    recipe = {"format": found.format, "precision": resolve_precision(req.precision, device), "engine": "onnxruntime",
              "scheme": None, "device": device, "exporter": "onnxruntime-genai model builder"}
    if req.adapters:
        recipe["adapters"] = adapter_fingerprints(req.adapters)
    if req.config:
        recipe["config"] = provenance.sha256(Path(req.config))
    return recipe


def convert(req, log) -> dict:
    from modelyard.runtime.convert.pipeline import summary

    if is_onnx_folder(req.input) or req.format == "onnx":
        raise ConvertError("AlreadyOnnx", f"{req.input} is already an ONNX export: the onnxruntime engine serves it as "
                           "it is (no convert step); `modelyard serve --engine onnxruntime --model DIR`")
    found = detect(req.input, req.format)
    recipe = make_recipe(req, found)
    output = Path(req.output)
    if provenance.matches(provenance.read(output), recipe, found.files):
        log(f"already converted: {output} holds this recipe for these inputs")
        return summary(output, recipe, skipped=True)
    partial = publish.partial_dir(output)
    hasher = provenance.Hasher(found.files, found.root)
    try:
        hf_dir = _hf_folder(req, found, partial, log)
        _export(hf_dir, partial, recipe, log)
        check_folder(partial)
        report = _gate(hf_dir, partial, recipe, log)
        if hf_dir.is_relative_to(partial):
            shutil.rmtree(hf_dir)
        record = provenance.build(input_path=Path(req.input), fmt=found.format, inputs=hasher.result(), recipe=recipe,
                                  outputs=sorted(p for p in partial.iterdir() if p.is_file()))
        record["tools"].update(_tool_versions())
        record["parity"] = report
        provenance.write(partial, record)
        publish.publish(partial, output)
    except BaseException:
        hasher.cancel()
        publish.discard(partial)
        raise
    log(f"exported {found.format} → ONNX {output} (precision {recipe['precision']}, {recipe['device']})")
    return summary(output, recipe)


def _hf_folder(req, found: Detected, partial: Path, log) -> Path:
    """The safetensors folder the builder reads: the input itself when it is one, else a conversion."""
    if found.format == "safetensors" and not req.adapters and not req.config and found.root == Path(req.input):
        return found.root
    from modelyard.runtime.convert.pipeline import Request, convert

    stage = partial / ".hf"
    log(f"preparing a safetensors folder to export from ({found.format}"
        f"{', merging ' + str(len(req.adapters)) + ' adapter(s)' if req.adapters else ''})")
    convert(Request(input=req.input, output=stage, format=found.format, precision="auto", config=req.config,
                    adapters=list(req.adapters), engine="accelerate"), log=log)
    return stage


def _export(hf_dir: Path, out: Path, recipe: dict, log) -> None:
    cache = out / ".builder-cache"
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(hf_dir), "-o", str(out),
           "-p", BUILDER_PRECISION[recipe["precision"]], "-e", recipe["device"], "-c", str(cache)]
    log(f"exporting with the onnxruntime-genai model builder (-p {cmd[cmd.index('-p') + 1]} -e {recipe['device']})")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    shutil.rmtree(cache, ignore_errors=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise ConvertError("ExportFailed", f"the onnxruntime-genai model builder failed (exit {proc.returncode}): {tail}")
    for name in SIDE_FILES:  # the source's config lets the planner and users read the architecture
        if (hf_dir / name).is_file() and not (out / name).exists():
            shutil.copy2(hf_dir / name, out / name)


def _gate(hf_dir: Path, partial: Path, recipe: dict, log) -> dict:
    """float32 on CPU: the export itself must match exactly. Anything else: a float32 CPU twin of the
    same checkpoint must match exactly (the graph reads the config right), then the export itself
    is held to its precision's tolerance where it can run here (CUDA exports need a CUDA runtime)."""
    if recipe["precision"] == "float32" and recipe["device"] == "cpu":
        return onnx_parity.gate(hf_dir, partial, "float32", log)
    twin = partial / ".float32-twin"
    _export(hf_dir, twin, {"precision": "float32", "device": "cpu"}, log)
    report = {"float32Twin": onnx_parity.gate(hf_dir, twin, "float32", log)}
    shutil.rmtree(twin)
    if recipe["device"] == "cuda" and not _cuda_runtime():
        log("the CUDA export itself is not run here (no CUDA execution provider in this step); its float32 twin matched")
        return {**report, "export": "not run: no CUDA execution provider in the convert step"}
    return {**report, **onnx_parity.gate(hf_dir, partial, recipe["precision"], log)}


def _cuda_runtime() -> bool:
    import onnxruntime_genai as og

    return bool(og.is_cuda_available())


def _tool_versions() -> dict[str, str]:
    out = {}
    for name in TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out

