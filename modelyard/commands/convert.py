"""`modelyard convert`: weights in any supported format → a verified Hugging Face safetensors folder
(or, with ``--engine onnxruntime``, a parity-checked onnxruntime-genai export).

The operator's convert Job runs exactly this command; ``modelyard up`` runs it locally. See
docs/convert.md for formats, precisions and the output layout.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

TERMINATION_LIMIT = 4096


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert/quantize weights into a Hugging Face safetensors folder",
                       description="Convert safetensors, PyTorch, TorchScript or GGUF weights into a verified Hugging Face "
                                   "safetensors folder; optionally cast, quantize (llmcompressor) or merge LoRA adapters.")
    p.add_argument("--input", required=True, type=Path, help="input folder or file")
    p.add_argument("--output", required=True, type=Path, help="output folder (written atomically)")
    p.add_argument("--format", default="auto", choices=("auto", "safetensors", "pytorch", "torchscript", "gguf", "onnx"),
                   help="input format (auto detects it from the files; onnx is refused with an explanation)")
    p.add_argument("--precision", default="auto", choices=("auto", "float32", "float16", "bfloat16", "fp8", "int8", "int4"))
    p.add_argument("--config", type=Path, help="config.json of the Hugging Face architecture (required for TorchScript)")
    p.add_argument("--merge-adapter", action="append", default=[], metavar="DIR", dest="adapters",
                   help="LoRA adapter folder to merge into the weights (repeatable)")
    p.add_argument("--scheme", choices=("W8A8", "W4A16", "FP8_DYNAMIC"), help="quantization scheme (default from --precision)")
    p.add_argument("--calibration-dataset", dest="calibration", metavar="NAME_OR_PATH",
                   help="calibrate with GPTQ on this .jsonl/.txt file or dataset (otherwise calibration-free)")
    p.add_argument("--termination-log", type=Path,
                   help="write the result or error as one JSON object here (default /dev/termination-log when writable)")
    p.add_argument("--engine", default="vllm", choices=("vllm", "accelerate", "onnxruntime"),
                   help="the engine that will serve the output; onnxruntime exports an ONNX folder "
                        "(onnxruntime-genai model builder) and checks greedy parity against transformers")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="onnxruntime only: the execution provider the export is built for (default cpu)")
    p.set_defaults(func=run)


def run(args) -> int:
    from modelyard.runtime.convert import Request, convert
    from modelyard.runtime.errors import ConvertError

    req = Request(input=args.input, output=args.output, format=args.format, precision=args.precision,
                  config=args.config, adapters=list(args.adapters), scheme=args.scheme,
                  calibration=args.calibration, engine=args.engine, device=args.device)
    try:
        result = convert(req)
    except ConvertError as exc:
        print(f"modelyard convert: {exc.reason}: {exc.message}", file=sys.stderr)
        _terminate(args.termination_log, exc.termination_message())
        return 1
    except Exception as exc:  # unexpected: still leave the operator a readable reason
        _terminate(args.termination_log, {"error": {"reason": "ConvertFailed", "message": f"{type(exc).__name__}: {exc}"}})
        raise
    print(json.dumps(result))
    _terminate(args.termination_log, result)
    return 0


def _terminate(path: Path | None, message: dict) -> None:
    """One JSON object of at most 4096 bytes, as for downloads (same default path and trimming)."""
    from modelyard.commands.download import fit, termination_log_path

    path = termination_log_path(str(path) if path else None)
    if path is None:
        return
    if "recipe" in message and len(json.dumps(message).encode()) > TERMINATION_LIMIT:
        message = {**message, "recipe": {k: v for k, v in message["recipe"].items() if k != "adapters"}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(fit(message, TERMINATION_LIMIT))
    except OSError as exc:
        print(f"modelyard convert: cannot write the termination log {path}: {exc}", file=sys.stderr)
