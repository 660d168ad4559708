"""The vLLM engine: ``modelyard serve --engine vllm``.

vLLM's own OpenAI server runs as a child process on the public port with the command line of
``build_vllm_args`` plus our ASGI middleware (``vllm_middleware.py``, vLLM's ``--middleware``
hook), which records the same ``modelyard_*`` metrics as the accelerate engine, serves them with
vLLM's ``vllm:*`` series at ``/metrics`` and checks adapters on ``/v1/load_lora_adapter``. In
process, not a reverse proxy: the extra hop cost +71% p50 latency on a busy 2-core machine.
vLLM starts through ``vllm_launch.py``, which answers 503 on the port while the model loads.

Adapters are checked against the base before vLLM starts: a mismatch is exit code 2 with the
reason (no crash loop of a slow engine start). SIGTERM is passed to vLLM, which drains requests in
flight (``--shutdown-timeout``) and exits; modelyard kills it if that takes too long.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from modelyard.runtime.adapters import AdapterError, validate_adapter
from modelyard.runtime.engines.vllm_args import ServeConfigError, build_vllm_args
from modelyard.runtime.errors import RuntimeStepError, fail_step

DRAIN_SECONDS = 60      # in-flight requests get this long after SIGTERM
STOP_SECONDS = 30       # then vLLM gets this long to exit before SIGKILL
VLLM_DEFAULT_LORA_RANK = 16  # LoRAConfig.max_lora_rank when --enable-lora comes without a rank


def parse_adapters(specs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise AdapterError(f"--adapter {spec!r}: expected NAME=DIR, e.g. --adapter sql=/models/sql-lora")
        if name.strip() in out:
            raise AdapterError(f"--adapter {name.strip()!r} is given twice; adapter names must be unique")
        out[name.strip()] = path.strip()
    return out


def _load_plan(value) -> dict | None:
    """``--plan`` (when the CLI has it): a JSON object or a path to one."""
    if not value:
        return None
    text = Path(value).read_text() if Path(value).is_file() else value
    return json.loads(text)


def engine_env(gpus: int, base: dict | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    if gpus < 1:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's default is sized for servers
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"      # /v1/load_lora_adapter and unload
    return env


def _fail(err: RuntimeStepError, code: int = 2) -> int:
    return fail_step(err, "serve", code)


def _die_with_parent() -> None:
    """In the child: get SIGTERM when modelyard dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def start_engine(vllm_args: list[str], env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "modelyard.runtime.engines.vllm_launch", *vllm_args]
    print(f"modelyard serve: starting vLLM: {' '.join(cmd)}", file=sys.stderr, flush=True)
    return subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent)


def _checked_adapters(args) -> dict[str, str]:
    adapters = parse_adapters(getattr(args, "adapter", None) or [])
    for name, path in adapters.items():
        validate_adapter(path, args.model, name=name)
    return adapters


def _max_rank(vllm_args: list[str]) -> int | None:
    """The --max-lora-rank vLLM will run with (the last one given wins, as in argparse)."""
    ranks = [vllm_args[i + 1] for i, a in enumerate(vllm_args[:-1]) if a == "--max-lora-rank"]
    ranks += [a.split("=", 1)[1] for a in vllm_args if a.startswith("--max-lora-rank=")]
    if ranks:
        return int(ranks[-1])
    return VLLM_DEFAULT_LORA_RANK if "--enable-lora" in vllm_args else None


MIDDLEWARE = "modelyard.runtime.engines.vllm_middleware.ModelyardMiddleware"


def serve(args) -> int:
    from modelyard.runtime.engines import vllm_group
    from modelyard.runtime.engines.vllm_middleware import ENV

    nodes = int(getattr(args, "nodes", None) or 1)
    try:
        group = vllm_group.group_from_env(nodes, args.port) if nodes > 1 else None
        adapters = _checked_adapters(args)
        vllm_args = build_vllm_args(
            args.model, served_model_name=args.served_model_name, port=args.port,
            host=getattr(args, "host", None) or "0.0.0.0", gpus=args.gpus, precision=args.precision,
            max_model_len=args.max_model_len, adapters=adapters,
            extra_args=list(getattr(args, "extra", None) or []), plan=_load_plan(getattr(args, "plan", None)),
            pipeline_parallel=int(getattr(args, "pipeline_parallel_size", None) or 1), nodes=nodes)
    except (AdapterError, ServeConfigError) as err:
        return _fail(err)
    if group:
        vllm_args += vllm_group.node_args(group, getattr(args, "master_port", None) or vllm_group.MASTER_PORT)
    env = engine_env(args.gpus)
    env[ENV] = json.dumps({"served_model_name": args.served_model_name, "model_dir": str(args.model),
                           "max_lora_rank": _max_rank(vllm_args), "adapters": sorted(adapters),
                           "planned_gpu_bytes": getattr(args, "planned_gpu_bytes", None), "started": time.time(),
                           "group_workers": list(group.workers) if group else []})
    if group and not group.is_leader:
        return _serve_worker(group, vllm_args, env, args)
    # --shutdown-timeout: on SIGTERM vLLM drains the requests in flight for up to that long
    proc = start_engine(["--shutdown-timeout", str(DRAIN_SECONDS), *vllm_args, "--middleware", MIDDLEWARE], env)
    return _supervise(proc, args)


def _serve_worker(group, vllm_args: list[str], env: dict, args) -> int:
    """Rank > 0: vLLM's headless executor, and /live + /health on --port for the probes."""
    from modelyard.runtime.engines.vllm_group import serve_worker_health

    proc = start_engine(vllm_args, env)
    host = getattr(args, "host", None) or "0.0.0.0"
    server = serve_worker_health(host, args.port, lambda: proc.poll() is None,
                                 f"http://{group.leader_http}/health")
    print(f"modelyard serve: node {group.rank} of {group.nodes} (headless worker; leader "
          f"{group.leader_http}); /live and /health on port {args.port}", file=sys.stderr, flush=True)
    try:
        return _supervise(proc, args, announce=False)
    finally:
        server.shutdown()


def _supervise(proc: subprocess.Popen, args, announce: bool = True) -> int:
    """Wait for vLLM; SIGTERM/SIGINT are passed on and bounded; report when it is ready."""
    stopping: list[float] = []

    def stop(signum, frame) -> None:
        if not stopping:
            stopping.append(time.monotonic())
            print("modelyard serve: stopping: draining requests in flight, then vLLM", file=sys.stderr, flush=True)
            _signal(proc, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if announce:
        threading.Thread(target=_announce_ready, args=(proc, args), daemon=True).start()
    while proc.poll() is None:
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            if stopping and time.monotonic() - stopping[0] > DRAIN_SECONDS + STOP_SECONDS:
                print("modelyard serve: vLLM did not stop in time; killing it", file=sys.stderr, flush=True)
                _signal(proc, signal.SIGKILL)
    if stopping:
        return 0
    print(f"modelyard serve: vLLM exited with code {proc.returncode} (its log is above)", file=sys.stderr, flush=True)
    return proc.returncode if proc.returncode and proc.returncode > 0 else 1


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _announce_ready(proc: subprocess.Popen, args) -> None:
    import urllib.request

    host = "127.0.0.1" if getattr(args, "host", "0.0.0.0") in ("0.0.0.0", "::", "", None) else args.host
    url, t0 = f"http://{host}:{args.port}/health", time.monotonic()
    while proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    names = ", ".join([args.served_model_name, *parse_adapters(args.adapter or [])])
                    print(f"modelyard serve: vLLM ready in {time.monotonic() - t0:.1f}s; serving {names} "
                          f"on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
                    return
        except OSError:
            pass
        time.sleep(0.5)
