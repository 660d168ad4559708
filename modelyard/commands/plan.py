"""`modelyard plan`: will this model fit, and how should it be loaded?

Exit codes: 0 when the plan fits, 1 when it does not, 2 on bad input (file, flag or config).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from modelyard.planner import Plan, PlanError, format_bytes, plan

PRECISIONS = ("auto", "float32", "float16", "bfloat16", "fp8", "int8", "int4")


def register(sub) -> None:
    p = sub.add_parser("plan", help="will the model fit, and how should it be loaded",
                       description=__doc__)
    p.add_argument("-f", "--filename", help="Model YAML (source, precision, engine, gpus, ...)")
    p.add_argument("--config", help="config.json to plan (default: from the Model's source)")
    p.add_argument("--index", help="model.safetensors.index.json (default: beside config.json)")
    p.add_argument("--gpus", type=int, help="GPUs per replica (0 = CPU)")
    p.add_argument("--gpu-memory", help="memory per GPU: 80GiB, 24GB or a profile name")
    p.add_argument("--gpus-per-node", type=int,
                   help="GPUs on each node; without --gpus the planner picks the fewest nodes, then GPUs, that fit")
    p.add_argument("--nodes", type=int, help="nodes per replica (gpus are split evenly over them)")
    p.add_argument("--memory", help="host memory for CPU plans and offload, e.g. 32Gi")
    p.add_argument("--precision", choices=PRECISIONS)
    p.add_argument("--engine", choices=("auto", "vllm", "accelerate"))
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--adapters-max-rank", type=int, help="largest LoRA rank served")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=run)


def _spec_from_file(path: str) -> dict[str, Any]:
    from modelyard.api import load_model

    spec = load_model(path).spec
    limits, requests = spec.resources.limits, spec.resources.requests
    return {
        "uri": spec.source.uri, "revision": spec.source.revision, "precision": spec.precision,
        "engine": spec.engine, "gpus": spec.gpus, "gpu_memory": spec.gpu_memory,
        "max_model_len": spec.serving.max_model_len,
        "gpus_per_node": spec.gpus_per_node, "nodes": spec.nodes,
        "memory": limits.get("memory") or requests.get("memory"),
        # vLLM's default --max-lora-rank; adapter ranks are only known once downloaded
        "adapters_max_rank": 16 if spec.adapters else None,
    }


def _read_json(path: Path, what: str, hint: str = "") -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PlanError(f"{what}: {path} not found{hint}") from None
    except json.JSONDecodeError as exc:
        raise PlanError(f"{what}: {path} is not valid JSON ({exc})") from None


def _local_dir(uri: str) -> Path | None:
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    if "://" not in uri:
        return Path(uri)
    return None


def _fetch_hf(uri: str, revision: str | None) -> tuple[dict, dict | None]:
    from huggingface_hub import hf_hub_download  # honours HF_ENDPOINT and HF_TOKEN

    repo = uri[len("hf://"):].strip("/")
    config = _read_json(Path(hf_hub_download(repo, "config.json", revision=revision)), "config.json")
    try:
        index_path = hf_hub_download(repo, "model.safetensors.index.json", revision=revision)
    except Exception:  # single-file checkpoints have no index
        return config, None
    return config, _read_json(Path(index_path), "model.safetensors.index.json")


def _load_config(args, spec: dict) -> tuple[dict, dict | None]:
    if args.config:
        config_path = Path(args.config)
        config = _read_json(config_path, "--config")
        index_path = Path(args.index) if args.index else config_path.parent / "model.safetensors.index.json"
    else:
        uri = spec.get("uri")
        if not uri:
            raise PlanError("no config.json to plan: pass --config config.json or -f model.yaml")
        if uri.startswith("hf://"):
            return _fetch_hf(uri, spec.get("revision"))
        folder = _local_dir(uri)
        if folder is None:
            raise PlanError(f"spec.source.uri {uri}: cannot read config.json from this scheme "
                            f"here; download it and pass --config config.json")
        config = _read_json(folder / "config.json", f"spec.source.uri {uri}",
                            "; pass --config config.json")
        index_path = Path(args.index) if args.index else folder / "model.safetensors.index.json"
    index = _read_json(index_path, "--index") if index_path.is_file() or args.index else None
    return config, index


def _table(p: Plan) -> str:
    rows = [
        ("architecture", p.architecture), ("parameters", f"{p.parameters:,}"),
        ("precision", p.precision + (f" ({p.quantization})" if p.quantization else "")),
        ("weights", format_bytes(p.weight_bytes)),
        ("KV cache / token", format_bytes(p.kv_cache_bytes_per_token)),
        ("engine", p.engine), ("gpus", str(p.gpus)),
        ("gpu memory", format_bytes(p.gpu_memory_bytes) if p.gpus else "-"),
        ("tensor parallel", str(p.tensor_parallel_size)),
        ("pipeline", str(p.pipeline_parallel_size)),
        ("nodes", f"{p.nodes}" + (f" × {p.gpus_per_node} GPUs" if p.gpus_per_node else "")),
        ("layout", p.layout or "-"),
        ("per GPU", format_bytes(p.per_gpu_bytes) if p.gpus else "-"),
        ("host memory", format_bytes(p.host_bytes) if p.host_bytes else "-"),
        ("max model len", f"{p.max_model_len} (model max {p.max_position_embeddings})"),
        ("max_memory", json.dumps(p.max_memory) if p.max_memory else "-"),
        ("offload", "yes" if p.offload else "no"), ("fits", "yes" if p.fits else "NO"),
        ("reason", p.reason),
    ]
    rows += [("assumption", a) for a in p.assumptions]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.upper():<{width}}  {v}" for k, v in rows)


def run(args) -> int:
    from modelyard.api import ValidationError

    try:
        spec = _spec_from_file(args.filename) if args.filename else {}
        if not args.filename and not args.config:
            raise PlanError("nothing to plan: pass -f model.yaml or --config config.json")
        config, index = _load_config(args, spec)
        flags = {"precision": args.precision, "engine": args.engine, "gpus": args.gpus,
                 "gpu_memory": args.gpu_memory, "max_model_len": args.max_model_len,
                 "memory": args.memory, "adapters_max_rank": args.adapters_max_rank,
                 "gpus_per_node": args.gpus_per_node, "nodes": args.nodes}
        merged = {k: v for k, v in spec.items() if k not in ("uri", "revision") and v is not None}
        merged.update({k: v for k, v in flags.items() if v is not None})
        if args.gpus_per_node and args.gpus is None and not merged.get("gpus"):
            merged["gpus"] = None  # choose the layout: the fewest nodes, then GPUs, that fit
        result = plan(config, index=index, **merged)
    except (PlanError, ValidationError) as exc:
        print(f"modelyard plan: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict()) if args.output == "json" else _table(result))
    return 0 if result.fits else 1
