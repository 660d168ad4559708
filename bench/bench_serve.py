"""Serving overhead: `modelyard serve --engine vllm` (our in-process middleware + metrics) vs the bare vLLM
api_server behind it, on the same tiny Llama, same request mix, same run.

Both servers run at once from the same command line (``build_vllm_args``), ours with the
modelyard middleware; rounds alternate (bare, ours, bare, ours, ...) so drift of the shared CPU
hits both. The accelerate engine's own numbers follow when its server is available (just
reported, vs bare vLLM).

Run from the repository root: ``.venv/bin/python -m bench serve`` (vLLM runs from .venv-vllm).
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
REQUESTS, CONCURRENCY, MAX_TOKENS, ROUNDS, WARMUP = 32, 4, 32, 8, 8
PROMPTS = ["The operator downloads weights", "Hello world! How are you", "Tensor parallel shards",
           "A model that does not fit"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(i: int, model: str) -> tuple[str, dict]:
    """The mix: completions, chat, and streamed completions; greedy, fixed length."""
    common = {"model": model, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}
    prompt = f"{PROMPTS[i % len(PROMPTS)]} {i}"
    if i % 4 == 1:
        return "/v1/chat/completions", {**common, "messages": [{"role": "user", "content": prompt}]}
    return "/v1/completions", {**common, "prompt": prompt, "stream": i % 4 == 3}


async def _one(session, url: str, path: str, body: dict) -> float:
    t0 = time.perf_counter()
    async with session.post(url + path, json=body) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}{path} answered {r.status}")
    return time.perf_counter() - t0


async def _load(url: str, model: str, n: int) -> list[float]:
    import aiohttp

    queue: asyncio.Queue = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    out: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        async def worker():
            while not queue.empty():
                i = queue.get_nowait()
                out.append(await _one(session, url, *_request(i, model)))

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return out


def _wait_health(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not healthy after {timeout}s")


def _start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})})


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _bare_cmd(model_dir: Path, port: int) -> list[str]:
    from modelyard.runtime.engines.vllm_args import build_vllm_args

    args = build_vllm_args(model_dir, served_model_name="tiny", port=port, max_model_len=512)
    return [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", *args]


def _vllm_rows(model_dir: Path, work: Path) -> tuple[dict[str, list[float]], dict[str, float]]:
    bare_port, port = _free_port(), _free_port()
    env_cpu = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    bare = _start(_bare_cmd(model_dir, bare_port), work / "bare-vllm.log", env_cpu)
    ours = _start([str(VLLM_PYTHON), "-m", "modelyard.cli", "serve", "--engine", "vllm", "--model", str(model_dir),
                   "--served-model-name", "tiny", "--max-model-len", "512", "--host", "127.0.0.1",
                   "--port", str(port)], work / "vllm-serve.log")
    try:
        _wait_health(f"http://127.0.0.1:{bare_port}", bare)
        _wait_health(f"http://127.0.0.1:{port}", ours)
        targets = {"bare vLLM api_server": f"http://127.0.0.1:{bare_port}",
                   "modelyard serve --engine vllm": f"http://127.0.0.1:{port}"}
        for url in targets.values():
            asyncio.run(_load(url, "tiny", WARMUP))
        lat: dict[str, list[float]] = {k: [] for k in targets}
        walls = {k: 0.0 for k in targets}
        for r in range(ROUNDS):  # ABBA order: neither server always goes first
            for name, url in (list(targets.items()) if r % 2 == 0 else list(targets.items())[::-1]):
                t0 = time.perf_counter()
                lat[name] += asyncio.run(_load(url, "tiny", REQUESTS))
                walls[name] += time.perf_counter() - t0
        counted = _counted(f"http://127.0.0.1:{port}")
    finally:
        _stop(ours)
        _stop(bare)
    expected = WARMUP + ROUNDS * REQUESTS
    assert counted == expected, f"modelyard_requests_total says {counted}, sent {expected}"
    return lat, walls


def _counted(url: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("modelyard_requests_total{") and 'code="200"' in line)


def _accelerate_rows(model_dir: Path, work: Path) -> list[float] | None:
    exe = Path(sys.executable).with_name("modelyard")
    port = _free_port()
    proc = _start([str(exe), "serve", "--engine", "accelerate", "--model", str(model_dir), "--served-model-name",
                   "tiny", "--max-model-len", "512", "--host", "127.0.0.1", "--port", str(port)],
                  work / "accelerate-serve.log")
    try:
        _wait_health(f"http://127.0.0.1:{port}", proc, timeout=180)
        url = f"http://127.0.0.1:{port}"
        asyncio.run(_load(url, "tiny", WARMUP))
        return asyncio.run(_load(url, "tiny", REQUESTS))
    except RuntimeError as exc:
        print(f"bench serve: accelerate engine not measured: {exc}", file=sys.stderr)
        return None
    finally:
        _stop(proc)


def _middleware_cost(n: int = 2000) -> dict[str, float]:
    """CPU microseconds the middleware adds per request, in this process, around a downstream
    ASGI app that answers like vLLM does (one JSON body; or 34 SSE chunks with a usage chunk)."""
    import json

    from modelyard.runtime.engines.vllm_middleware import ModelyardMiddleware

    usage = {"prompt_tokens": 5, "completion_tokens": 32, "total_tokens": 37}
    plain = json.dumps({"id": "x", "object": "text_completion", "model": "tiny", "usage": usage,
                        "choices": [{"index": 0, "text": "word " * 32, "finish_reason": "length"}]}).encode()
    chunk = b'data: {"id":"x","object":"text_completion","model":"tiny","choices":[{"index":0,"text":"w"}]}\n\n'
    tail = b'data: ' + json.dumps({"id": "x", "choices": [], "usage": usage}).encode() + b"\n\ndata: [DONE]\n\n"

    async def engine(scope, receive, send):
        await receive()
        sse = scope["path"] == "/stream"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream" if sse else b"application/json")]})
        for piece in ([chunk] * 32 + [tail]) if sse else [plain]:
            await send({"type": "http.response.body", "body": piece, "more_body": sse and piece is not tail})

    body = {False: json.dumps({"model": "tiny", "prompt": "Hello", "max_tokens": 32}).encode(),
            True: json.dumps({"model": "tiny", "prompt": "Hello", "max_tokens": 32, "stream": True}).encode()}

    async def timed(app, stream: bool) -> float:
        async def receive():
            return {"type": "http.request", "body": body[stream], "more_body": False}

        async def send(msg):
            pass

        scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}
        t0 = time.process_time()
        for _ in range(n):
            await app(scope, receive, send)
        return (time.process_time() - t0) / n * 1e6

    async def both(stream: bool) -> float:
        async def direct(scope, receive, send):
            return await engine({**scope, "path": "/stream" if stream else "/plain"}, receive, send)

        wrapped = ModelyardMiddleware(direct, {"served_model_name": "tiny"})
        base = await timed(direct, stream)
        return await timed(wrapped, stream) - base

    return {"plain": asyncio.run(both(False)), "stream": asyncio.run(both(True))}


def _row(name: str, xs: list[float], base: list[float] | None, wall: float | None) -> str:
    p50, p95 = _pct(xs, 0.5), _pct(xs, 0.95)
    if base is None:
        over = "baseline"
    else:
        over = f"{(p50 / _pct(base, 0.5) - 1) * 100:+.1f}% / {(p95 / _pct(base, 0.95) - 1) * 100:+.1f}%"
    rps = f"{len(xs) / wall:.1f}" if wall else "—"
    return f"| {name} | {len(xs)} | {p50 * 1000:.1f} | {p95 * 1000:.1f} | {statistics.mean(xs) * 1000:.1f} | {rps} | {over} |"


def run() -> str:
    from modelyard.runtime.tiny import make_tiny_llama

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        model_dir = make_tiny_llama(work / "tiny")
        lat, walls = _vllm_rows(model_dir, work)
        acc = _accelerate_rows(model_dir, work)
    bare, ours = lat["bare vLLM api_server"], lat["modelyard serve --engine vllm"]
    lines = [
        "## Serving: modelyard's vLLM wrapper vs bare vLLM",
        "",
        f"Tiny Llama (2 layers, hidden 256) on vllm-cpu, {ROUNDS} alternating rounds of {REQUESTS} requests "
        f"at concurrency {CONCURRENCY}, {MAX_TOKENS} tokens each (greedy, ignore_eos); mix: 1/2 completions, "
        f"1/4 chat, 1/4 streamed completions. Both servers run at once with the same vLLM "
        f"command line; ours adds the modelyard middleware (metrics, adapter checks). Latency in ms; overhead is p50 / p95 vs bare.",
        "",
        "| server | requests | p50 | p95 | mean | req/s | overhead p50 / p95 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        _row("bare vLLM api_server", bare, None, walls["bare vLLM api_server"]),
        _row("modelyard serve --engine vllm", ours, bare, walls["modelyard serve --engine vllm"]),
    ]
    if acc:
        lines.append(_row("modelyard serve --engine accelerate (one round)", acc, bare, None))
    else:
        lines.append("| modelyard serve --engine accelerate | — | not measured (server did not start) | | | | |")
    p50 = (_pct(ours, 0.5) / _pct(bare, 0.5) - 1) * 100
    p95 = (_pct(ours, 0.95) / _pct(bare, 0.95) - 1) * 100
    cost = _middleware_cost()
    share = max(cost.values()) / 1e6 / _pct(bare, 0.5) * 100
    verdict = "within" if share <= 3.0 else "ABOVE"
    lines += ["", f"End to end in this run: p50 {p50:+.1f}%, p95 {p95:+.1f}% (negative: ours was faster). Both "
                  f"servers share the same 2 cores with other jobs, so this difference is mostly scheduling "
                  f"noise (earlier runs: docs/benchmarks-history.md). The wrapper's "
                  f"`modelyard_requests_total` matched the requests sent (checked in this run).",
              "",
              f"What the wrapper itself costs, measured without that noise: middleware CPU per request "
              f"(same process, around an ASGI app answering like vLLM) is {cost['plain']:.0f} µs for a JSON "
              f"response and {cost['stream']:.0f} µs for a 32-chunk stream: {share:.2f}% of the bare p50 — "
              f"{verdict} the 3% target. The metrics run inside vLLM's server through its `--middleware` hook "
              f"(why not a reverse proxy: docs/benchmarks-history.md)."]
    return "\n".join(lines) + "\n"
