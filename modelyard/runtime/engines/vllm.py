"""The vLLM engine: ``modelyard serve --engine vllm``.

vLLM's own OpenAI server runs as a child process on an internal localhost port with the command
line of ``build_vllm_args``; our proxy (``proxy.py``) serves the public port in front of it with
the same API and the same ``modelyard_*`` metrics as the accelerate engine, plus vLLM's ``vllm:*``
series at ``/metrics``. Adapters are checked against the base before vLLM starts: a mismatch is
exit code 2 with the reason (no crash loop of a slow engine start).

Shutdown: SIGTERM stops accepting, waits (bounded) for requests in flight, then stops vLLM.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from modelyard.runtime.adapters import AdapterError, validate_adapter
from modelyard.runtime.engines.vllm_args import ServeConfigError, build_vllm_args
from modelyard.runtime.errors import RuntimeStepError

DRAIN_SECONDS = 60      # in-flight requests get this long after SIGTERM
STOP_SECONDS = 30       # then vLLM gets this long to exit before SIGKILL
TERMINATION_LOG = "/dev/termination-log"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    print(f"modelyard serve: {err.message}", file=sys.stderr, flush=True)
    if os.path.exists(TERMINATION_LOG):
        try:
            with open(TERMINATION_LOG, "w") as f:
                json.dump(err.termination_message(), f)
        except OSError:
            pass
    return code


def _die_with_parent() -> None:
    """In the child: get SIGTERM when modelyard dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def start_engine(vllm_args: list[str], env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *vllm_args]
    print(f"modelyard serve: starting vLLM: {' '.join(cmd)}", file=sys.stderr, flush=True)
    return subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent)


def stop_engine(proc: subprocess.Popen, timeout: float = STOP_SECONDS) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def _checked_adapters(args) -> dict[str, str]:
    adapters = parse_adapters(getattr(args, "adapter", None) or [])
    for name, path in adapters.items():
        validate_adapter(path, args.model, name=name)
    return adapters


def _max_rank(vllm_args: list[str]) -> int | None:
    """The --max-lora-rank vLLM will run with (the last one given wins, as in argparse)."""
    ranks = [vllm_args[i + 1] for i, a in enumerate(vllm_args[:-1]) if a == "--max-lora-rank"]
    ranks += [a.split("=", 1)[1] for a in vllm_args if a.startswith("--max-lora-rank=")]
    return int(ranks[-1]) if ranks else None


def serve(args) -> int:
    from modelyard.runtime.engines.proxy import ProxyState
    from modelyard.runtime.metrics import ServingMetrics

    try:
        adapters = _checked_adapters(args)
        internal = _free_port()
        vllm_args = build_vllm_args(
            args.model, served_model_name=args.served_model_name, port=internal, gpus=args.gpus,
            precision=args.precision, max_model_len=args.max_model_len, adapters=adapters,
            extra_args=list(getattr(args, "extra", None) or []), plan=_load_plan(getattr(args, "plan", None)))
    except (AdapterError, ServeConfigError) as err:
        return _fail(err)
    max_rank = _max_rank(vllm_args)

    def check(name: str, path: str) -> None:
        if max_rank is None:
            raise AdapterError("LoRA is not enabled on this server: declare at least one adapter in "
                               "spec.adapters, or add --enable-lora to spec.serving.args")
        validate_adapter(path, args.model, max_rank=max_rank, name=name)

    metrics = ServingMetrics("vllm", args.served_model_name, planned_gpu_bytes=getattr(args, "planned_gpu_bytes", None))
    state = ProxyState(upstream=f"http://127.0.0.1:{internal}", metrics=metrics,
                       served_model_name=args.served_model_name, validate_adapter=check, adapters=set(adapters))
    proc = start_engine(vllm_args, engine_env(args.gpus))
    return _run(state, proc, getattr(args, "host", "0.0.0.0"), args.port)


def _run(state, proc: subprocess.Popen, host: str, port: int) -> int:
    import uvicorn

    from modelyard.runtime.engines.proxy import create_proxy_app

    def ready(st) -> None:
        if st.ready:
            print(f"modelyard serve: vLLM ready in {time.monotonic() - st.started:.1f}s; serving "
                  f"{', '.join([st.served_model_name, *sorted(st.adapters)])} on http://{host}:{port}/v1",
                  file=sys.stderr, flush=True)
        else:
            server.should_exit = True

    config = uvicorn.Config(create_proxy_app(state, on_ready=ready), host=host, port=port, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=DRAIN_SECONDS)
    server = uvicorn.Server(config)

    def watch() -> None:
        rc = proc.wait()
        if not server.should_exit:
            when = "while serving" if state.ready else "before it was ready"
            state.error = f"vLLM exited with code {rc} {when} (its log is above)"
            print(f"modelyard serve: {state.error}", file=sys.stderr, flush=True)
            server.should_exit = True

    threading.Thread(target=watch, name="vllm-watch", daemon=True).start()
    # uvicorn re-raises the SIGTERM/SIGINT it drained on, after restoring the handlers it found:
    # with these in place that lands here and vLLM is stopped below instead of orphaned.
    stopped = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopped.append(signum))
    try:
        server.run()
    finally:
        stop_engine(proc)
    if state.error:
        print(f"modelyard serve: {state.error}", file=sys.stderr, flush=True)
        return 1
    return 0
