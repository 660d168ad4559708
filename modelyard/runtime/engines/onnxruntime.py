"""The ONNX Runtime engine: onnxruntime-genai serves an export folder (``genai_config.json``,
``model.onnx`` + external weights, tokenizer) on CPU, or on the CUDA execution provider when
``--gpus`` is 1 or more, with continuous batching (``og.Engine``), through the shared
OpenAI-compatible server (same API, metrics, limits as the other engines).

The folder is served as it is, after ``check_folder`` says it is complete; a Hugging Face
checkpoint is exported first by ``modelyard convert --engine onnxruntime``. LoRA adapters are not
served separately: they are merged at export (``--merge-adapter``); ``--adapter`` is refused.
Precision is fixed at export; ``--precision`` other than auto must match what the export recorded.
Engine arguments after ``--``: ``max-batch=N`` (requests generating together, default 8).
"""
from __future__ import annotations

import json
from pathlib import Path

from modelyard.runtime.errors import RuntimeStepError, fail_step

from modelyard.planner.onnxruntime import ORT_MAX_BATCH as DEFAULT_MAX_BATCH


class EngineConfigError(RuntimeStepError):
    def __init__(self, message: str):
        super().__init__("InvalidServingConfig", message)


def _extra(extra: list[str]) -> dict:
    out = {"max_batch": DEFAULT_MAX_BATCH}
    for item in extra:
        key, sep, value = item.lstrip("-").partition("=")
        if key.replace("_", "-") != "max-batch" or not sep or not value.isdigit() or not 1 <= int(value) <= 256:
            raise EngineConfigError(f"extra onnxruntime argument {item!r}: the only one is max-batch=N (1..256)")
        out["max_batch"] = int(value)
    return out


def _check_precision(model_dir: Path, precision: str) -> None:
    if precision == "auto":
        return
    try:
        recipe = json.loads((model_dir / "modelyard-provenance.json").read_text())["recipe"]
    except (OSError, ValueError, KeyError):
        return  # a folder exported elsewhere: its precision is whatever it was exported at
    exported = recipe.get("precision")
    if exported not in (None, "auto", precision):
        raise EngineConfigError(f"--precision {precision}, but {model_dir} was exported at {exported}; "
                                "export again with that precision (modelyard convert --engine onnxruntime)")


def build(args):
    """Check the arguments and the folder; an unloaded engine, or EngineConfigError/OnnxFolderError."""
    from modelyard.runtime.engines.onnxruntime_engine import OrtEngine
    from modelyard.runtime.onnx_folder import check_folder

    if args.adapter:
        raise EngineConfigError("the onnxruntime engine serves no separate LoRA adapters (--adapter); merge them "
                                "into the export instead: spec.adapters[].merge: true, or modelyard convert "
                                "--engine onnxruntime --merge-adapter DIR")
    model_dir = Path(args.model)
    check_folder(model_dir)
    _check_precision(model_dir, args.precision)
    if args.max_memory or args.offload_folder:
        raise EngineConfigError("--max-memory/--offload-folder are accelerate options; the onnxruntime engine "
                                "loads the whole export on one device")
    if args.gpus > 1:
        raise EngineConfigError(f"--gpus {args.gpus}: the onnxruntime engine uses one GPU (the CUDA execution "
                                "provider); use engine vllm to shard over several")
    if args.gpus == 1:
        import onnxruntime_genai as og

        if not og.is_cuda_available():
            raise EngineConfigError("--gpus 1 but this onnxruntime-genai has no CUDA execution provider "
                                    "(install onnxruntime-genai-cuda) or sees no GPU; use --gpus 0 for CPU")
    extra = _extra(args.extra or [])
    return OrtEngine(str(model_dir), args.served_model_name, cuda=args.gpus == 1,
                     max_batch=extra["max_batch"], max_model_len=args.max_model_len,
                     trust_remote_code=bool(getattr(args, "trust_remote_code", False)))


def serve(args) -> int:
    from modelyard.runtime import server
    from modelyard.runtime.metrics import ServingMetrics

    try:
        engine = build(args)
    except RuntimeStepError as exc:
        return fail_step(exc, "serve")
    metrics = ServingMetrics("onnxruntime", args.served_model_name, planned_gpu_bytes=args.planned_gpu_bytes)
    engine.on_step = metrics.batch_size.labels(model=args.served_model_name).observe
    engine.on_abandoned = metrics.tokens
    from modelyard.runtime.guard import GuardConfig

    return server.run(engine, metrics, engine.load, args.host, args.port, GuardConfig.from_args(args, {}))
