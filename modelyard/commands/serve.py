"""`modelyard serve`: the OpenAI-compatible server a serving Deployment (and `modelyard up`) runs.

    modelyard serve --engine accelerate|vllm --model DIR [--adapter NAME=DIR]... [--port 8000]
                    [--host 0.0.0.0] [--served-model-name NAME] [--gpus N] [--precision P]
                    [--max-model-len N] [--max-memory JSON] [--offload-folder DIR]
                    [--planned-gpu-bytes N] [--nodes N [--pipeline-parallel-size P]
                    [--master-port P]] [-- EXTRA ENGINE ARGS]
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

PRECISIONS = ("auto", "float32", "float16", "bfloat16", "fp8", "int8", "int4")


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible API with Prometheus metrics",
                       description="Serve a model folder over /v1/models, /v1/completions, "
                                   "/v1/chat/completions, /health and /metrics.")
    p.add_argument("--engine", required=True, help="serving engine: accelerate or vllm")
    p.add_argument("--model", required=True, help="model folder (config.json, weights, tokenizer)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                   help="LoRA adapter served as model NAME (repeatable)")
    p.add_argument("--adapters-file", metavar="FILE",
                   help="JSON {name: folder} of adapters to serve; re-read while serving, changes hot-load")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    p.add_argument("--served-model-name", help="model name clients send (default: the folder name)")
    p.add_argument("--gpus", type=int, default=0, help="GPUs to use; 0 = CPU (default 0)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="weight precision (default auto)")
    p.add_argument("--max-model-len", type=int, help="context length limit (default: the model's)")
    p.add_argument("--max-memory", help='accelerate max_memory as JSON, e.g. \'{"0": "70GiB", "cpu": "100GiB"}\'')
    p.add_argument("--offload-folder", help="folder for weights offloaded to disk")
    p.add_argument("--planned-gpu-bytes", type=int, help="planner's per-GPU estimate, exported as a metric")
    p.add_argument("--nodes", type=int, default=1,
                   help="nodes in the group (vllm); above 1 the rank and leader come from LWS_WORKER_INDEX "
                        "and LWS_LEADER_ADDRESS: rank 0 serves the API, the others run headless")
    p.add_argument("--pipeline-parallel-size", type=int, help="pipeline stages (vllm; default 1, or --nodes on CPU)")
    p.add_argument("--master-port", type=int, help="port of the group's torch.distributed master on the leader (default 29501)")
    p.add_argument("extra", nargs="*", metavar="-- EXTRA", help="engine arguments after --")
    p.set_defaults(func=run)


def run(args) -> int:
    from modelyard.runtime import engines

    try:
        engine = engines.load(args.engine)
    except engines.EngineError as exc:
        print(f"modelyard serve: {exc}", file=sys.stderr)
        return 2
    if not args.served_model_name:
        args.served_model_name = Path(args.model).resolve().name
    if args.gpus < 0:
        print("modelyard serve: --gpus must be 0 (CPU) or more", file=sys.stderr)
        return 2
    if args.nodes < 1 or (args.nodes > 1 and args.engine != "vllm"):
        print("modelyard serve: --nodes must be 1, or more with --engine vllm", file=sys.stderr)
        return 2
    worker = args.nodes > 1 and os.environ.get("LWS_WORKER_INDEX", "0") != "0"
    sync = None
    if args.adapters_file:
        from modelyard.runtime.adapter_sync import AdapterSync, read_adapters_file

        try:
            initial = read_adapters_file(args.adapters_file)
        except ValueError as exc:
            print(f"modelyard serve: --adapters-file {exc}", file=sys.stderr)
            return 2
        args.adapter = list(args.adapter) + [f"{n}={d}" for n, d in initial.items()]
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        if not worker:  # the leader hot-loads for the whole group
            sync = AdapterSync(args.adapters_file, f"http://{host}:{args.port}", loaded=initial).start()
    try:
        return int(engine.serve(args) or 0)
    finally:
        if sync:
            sync.stop()
