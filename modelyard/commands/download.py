"""`modelyard download --source URI --dest DIR`: what the operator's download Job runs.

Exit codes: 0 done (or already downloaded), 3 the plan says the model does not fit (nothing but
the config was downloaded), 1 any other failure. The termination log (Kubernetes reads
``/dev/termination-log``) gets one JSON object of at most 4096 bytes:
``{"resolvedRevision", "plan", "files", "bytes"}`` on success, ``{"error": {"reason",
"message"}, "plan"}`` on failure. Credentials come only from the environment.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
LIMIT = 4096
PLAN_KEYS = ("parameters", "weightBytes", "kvCacheBytesPerToken", "engine", "precision",
             "tensorParallelSize", "perGpuBytes", "maxModelLen", "fits", "reason",
             "pipelineParallelSize", "nodes", "gpusPerNode")


def register(sub) -> None:
    p = sub.add_parser("download", help="download a model from hf://, s3://, http(s)://, pvc:// or file://",
                       description="Plan, then download, verify and record a model (resumable).")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--source", help="hf://org/repo, s3://bucket/prefix, https://host/file[.tar.gz|.zip], "
                       "pvc://claim/path or file:///abs/path")
    where.add_argument("--source-env", metavar="VAR", help="read the source URI from this environment variable "
                       "(a presigned URL from a Secret: it never appears in the pod's arguments)")
    p.add_argument("--dest", required=True, type=Path, help="destination folder")
    p.add_argument("--revision", help="branch, tag or commit (hf://); default main")
    p.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="only files matching this glob (repeatable); config.json is always fetched for the plan")
    p.add_argument("--termination-log", help=f"where to write the result JSON (default {DEFAULT_TERMINATION_LOG} "
                   "when it exists and is writable)")
    p.add_argument("--plan-precision", help="precision to plan for (auto, float16, bfloat16, int8, int4, ...)")
    p.add_argument("--plan-engine", help="engine to plan for (auto, vllm, accelerate)")
    p.add_argument("--plan-gpus", type=int, help="GPUs to plan for (0 = CPU)")
    p.add_argument("--plan-gpu-memory", help="memory per GPU, e.g. 80GiB")
    p.add_argument("--plan-max-model-len", type=int, help="context length to plan for")
    p.add_argument("--plan-gpus-per-node", type=int, help="GPUs on each node (more GPUs span nodes)")
    p.add_argument("--plan-nodes", type=int, help="nodes per replica")
    p.add_argument("--no-enforce-plan", dest="enforce_plan", action="store_false",
                   help="download even when the plan says the model does not fit (the plan is enforced only "
                   "when at least one --plan-* flag names a target)")
    p.add_argument("--no-plan", action="store_true", help="skip planning (adapters, sources without config.json)")
    p.set_defaults(func=run)


def run(args) -> int:
    from modelyard.runtime.download import Request, download
    from modelyard.runtime.errors import DownloadError
    from modelyard.uri import redact, scrub

    if args.source_env:
        args.source = os.environ.get(args.source_env, "")
        if not args.source:
            print(f"modelyard download: --source-env: ${args.source_env} is empty or not set", file=sys.stderr)
            return 2
    plan_args = None if args.no_plan else _plan_args(args)
    bad = _check_plan_args(plan_args)
    if bad:
        print(f"modelyard download: {bad}", file=sys.stderr)
        return 2
    # With no --plan-* flag there is no target to check against: the plan is recorded, not enforced.
    request = Request(source=args.source, dest=args.dest, revision=args.revision, include=list(args.include),
                      plan_args=plan_args, enforce_plan=args.enforce_plan and bool(plan_args))
    term = termination_log_path(args.termination_log)
    try:
        result = download(request)
    except DownloadError as exc:
        _write(term, exc.termination_message())
        print(f"modelyard download: {exc.reason}: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - still tell Kubernetes why (and the log), without credentials
        _write(term, {"error": {"reason": "DownloadFailed", "message": f"{type(exc).__name__}: {exc}"}, "plan": None})
        print(scrub(traceback.format_exc()), file=sys.stderr)
        return 1
    _write(term, {**result.termination_message(), "format": _detected_format(args.dest)})
    state = "already downloaded" if result.already else "downloaded"
    print(f"{state}: {len(result.files)} files, {result.bytes} bytes, {redact(args.source)} at "
          f"{result.resolved_revision} -> {args.dest}")
    return 0


def _detected_format(dest: str) -> str | None:
    """The weights' format from the files themselves, so the operator knows if a convert step is needed."""
    from modelyard.runtime.formats import detect
    from modelyard.runtime.errors import ConvertError

    try:
        return detect(dest).format
    except ConvertError:  # no weights (an adapter, a tokenizer-only repo) or a mix: convert decides later
        return None


def _plan_args(args) -> dict:
    pairs = {"precision": args.plan_precision, "engine": args.plan_engine, "gpus": args.plan_gpus,
             "gpu_memory": args.plan_gpu_memory, "max_model_len": args.plan_max_model_len,
             "gpus_per_node": args.plan_gpus_per_node, "nodes": args.plan_nodes}
    return {k: v for k, v in pairs.items() if v is not None}


def _check_plan_args(plan_args: dict | None) -> str | None:
    """Let the planner judge the --plan-* values on a tiny probe config, before any download."""
    if not plan_args:
        return None
    from modelyard.planner import PlanError, plan
    from modelyard.runtime.tiny import TINY_LLAMA

    from modelyard.planner.parallel import check_gpus_per_node, check_nodes

    probe = {**TINY_LLAMA, "architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    # the layout (gpus over nodes) depends on the real config's heads and layers: only the values here
    single = {k: v for k, v in plan_args.items() if k not in ("gpus_per_node", "nodes")}
    if isinstance(single.get("gpus"), int) and single["gpus"] > 1:
        single["gpus"] = 1
    try:
        if "gpus_per_node" in plan_args:
            check_gpus_per_node(plan_args["gpus_per_node"])
        check_nodes(plan_args.get("nodes"))
        plan(probe, **single)
    except PlanError as exc:
        field = str(exc).split(":", 1)[0]
        flag = {"gpuMemory": "--plan-gpu-memory", "maxModelLen": "--plan-max-model-len",
                "gpusPerNode": "--plan-gpus-per-node"}.get(field, f"--plan-{field}")
        return f"{flag}: {str(exc).split(':', 1)[-1].strip()}"
    return None


def termination_log_path(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    default = Path(DEFAULT_TERMINATION_LOG)
    if default.exists() and os.access(default.parent, os.W_OK) and os.access(default, os.W_OK):
        return default
    return None


def fit(message: dict, limit: int = LIMIT) -> str:
    """The JSON text, at most ``limit`` bytes: trim the plan to its key fields, then the message."""
    text = json.dumps(message)
    if len(text.encode()) <= limit:
        return text
    plan = message.get("plan")
    if isinstance(plan, dict):
        message = {**message, "plan": {k: plan[k] for k in PLAN_KEYS if k in plan}}
        text = json.dumps(message)
    err = message.get("error")
    while len(text.encode()) > limit and err and len(err.get("message", "")) > 20:
        err = {**err, "message": err["message"][: len(err["message"]) // 2] + "..."}
        message = {**message, "error": err}
        text = json.dumps(message)
    if len(text.encode()) > limit:
        text = json.dumps({k: v for k, v in message.items() if k != "plan"})
    return text


def _write(path: Path | None, message: dict) -> None:
    from modelyard.uri import scrub

    if path is None:
        return
    try:
        path.write_text(fit(json.loads(scrub(json.dumps(message)))))
    except OSError as exc:
        print(f"modelyard download: cannot write the termination log {path}: {exc}", file=sys.stderr)
