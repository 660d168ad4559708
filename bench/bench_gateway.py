"""Gateway overhead and cold start: `modelyard gateway` in front of a `modelyard serve --engine
accelerate` replica vs calling the replica directly, same run, requests alternating (direct,
gateway, direct, ...) so drift of the shared CPU hits both; non-streaming and streaming (time to
the last byte). Also the gateway process's own CPU per request (psutil), which shared-CPU noise
does not blur, and the cold start from zero of the tiny model through `modelyard up`
(request held → answered) vs starting `modelyard serve` by hand and sending the same request.

Run from the repository root: ``.venv/bin/python -m bench gateway``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import yaml

MODELYARD = str(Path(sys.executable).with_name("modelyard"))
ROUNDS, WARMUP, MAX_TOKENS = 150, 5, 24
BODY = {"model": "tiny", "messages": [{"role": "user", "content": "Hello world! How are you"}],
        "max_tokens": MAX_TOKENS, "temperature": 0}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], log: Path, cpus: set[int] | None = None, env: dict | None = None) -> subprocess.Popen:
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    return subprocess.Popen([MODELYARD, *args], stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}, preexec_fn=pin)


def _cores() -> tuple[set[int], set[int]]:
    """(the replica's cores, the gateway's and this client's): in a cluster the gateway is its own
    pod, so it must not take CPU from the replica's torch threads; one core each way on 2 cores."""
    cores = sorted(os.sched_getaffinity(0))
    half = max(1, len(cores) // 2)
    return set(cores[:half]), set(cores[half:] or cores)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: exited {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not up after {timeout}s")


def _once(client: httpx.Client, base: str, stream: bool) -> float:
    start = time.perf_counter()
    if stream:
        with client.stream("POST", base + "/v1/chat/completions", json={**BODY, "stream": True}) as r:
            for _ in r.iter_raw():
                pass
            assert r.status_code == 200
    else:
        r = client.post(base + "/v1/chat/completions", json=BODY)
        assert r.status_code == 200, r.text
    return time.perf_counter() - start


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _overhead(replica: str, gateway: str, gw_proc: subprocess.Popen) -> dict:
    out = {}
    cpu = psutil.Process(gw_proc.pid)
    with httpx.Client(timeout=120) as client:
        for stream in (False, True):
            for _ in range(WARMUP):
                _once(client, replica, stream), _once(client, gateway, stream)
            direct, via, spent = [], [], 0.0
            for _ in range(ROUNDS):
                direct.append(_once(client, replica, stream))
                before = sum(cpu.cpu_times()[:2])
                via.append(_once(client, gateway, stream))
                spent += sum(cpu.cpu_times()[:2]) - before
            out["streaming" if stream else "non-streaming"] = (direct, via, spent / ROUNDS)
    return out


def _cold_start(model_dir: Path, work: Path) -> tuple[float, float]:
    """(through `modelyard up` at zero: request to answer, by hand: `serve` start to first answer)."""
    port = _free_port()
    spec = {"apiVersion": "modelyard.io/v1alpha1", "kind": "Model", "metadata": {"name": "tiny"},
            "spec": {"source": {"uri": f"file://{model_dir}"}, "engine": "accelerate", "precision": "float32",
                     "replicas": 0, "scaling": {"minReplicas": 0, "maxReplicas": 1, "scaleDownDelaySeconds": 600}}}
    (work / "tiny.yaml").write_text(yaml.safe_dump(spec))
    up = _start(["up", "-f", str(work / "tiny.yaml"), "--port", str(port), "--workdir", str(work / "up")], work / "up.log")
    try:
        _wait(f"http://127.0.0.1:{port}/health", up, work / "up.log")
        start = time.perf_counter()
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=BODY, timeout=600)
        held = time.perf_counter() - start
        assert r.status_code == 200, r.text
    finally:
        _stop(up)
    p = _free_port()
    start = time.perf_counter()
    serve = _start(["serve", "--engine", "accelerate", "--model", str(model_dir), "--served-model-name", "tiny",
                    "--precision", "float32", "--host", "127.0.0.1", "--port", str(p)], work / "serve-cold.log")
    try:
        _wait(f"http://127.0.0.1:{p}/health", serve, work / "serve-cold.log")
        assert httpx.post(f"http://127.0.0.1:{p}/v1/chat/completions", json=BODY, timeout=600).status_code == 200
        by_hand = time.perf_counter() - start
    finally:
        _stop(serve)
    return held, by_hand


def _row(name: str, direct: list[float], via: list[float], cpu_s: float) -> str:
    d50, d95, v50, v95 = _pct(direct, .5), _pct(direct, .95), _pct(via, .5), _pct(via, .95)
    paired = _pct([v - d for d, v in zip(direct, via)], .5)  # each pair ran back to back: drift cancels
    return (f"| {name} | {len(via)} | {d50 * 1000:.1f} / {d95 * 1000:.1f} | {v50 * 1000:.1f} / {v95 * 1000:.1f} | "
            f"{(v50 / d50 - 1) * 100:+.1f}% / {(v95 / d95 - 1) * 100:+.1f}% | {paired * 1000:+.2f} ms ({paired / d50 * 100:+.1f}%) | "
            f"{cpu_s * 1e6:.0f} µs ({cpu_s / d50 * 100:.2f}% of direct p50) |")


def run() -> str:
    from modelyard.runtime.tiny import make_tiny_llama

    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        work = Path(tmp)
        model_dir = make_tiny_llama(work / "tiny")
        rport, gport = _free_port(), _free_port()
        replica_cpus, gateway_cpus = _cores()
        own = os.sched_getaffinity(0)
        replica = _start(["serve", "--engine", "accelerate", "--model", str(model_dir), "--served-model-name", "tiny",
                          "--precision", "float32", "--host", "127.0.0.1", "--port", str(rport)], work / "serve.log",
                         cpus=replica_cpus, env={"OMP_NUM_THREADS": str(len(replica_cpus))})
        (work / "routes.yaml").write_text(yaml.safe_dump({"models": [{"name": "tiny", "replicas": [f"http://127.0.0.1:{rport}"]}]}))
        gw = None
        try:
            _wait(f"http://127.0.0.1:{rport}/health", replica, work / "serve.log")
            gw = _start(["gateway", "--config", str(work / "routes.yaml"), "--host", "127.0.0.1", "--port", str(gport)],
                        work / "gateway.log", cpus=gateway_cpus)
            _wait(f"http://127.0.0.1:{gport}/health", gw, work / "gateway.log")
            time.sleep(1.0)  # the first probe marks the replica ready
            os.sched_setaffinity(0, gateway_cpus)
            try:
                rows = _overhead(f"http://127.0.0.1:{rport}", f"http://127.0.0.1:{gport}", gw)
            finally:
                os.sched_setaffinity(0, own)
        finally:
            if gw:
                _stop(gw)
            _stop(replica)
        held, by_hand = _cold_start(model_dir, work)
    lines = [
        "## Gateway: overhead vs calling the replica directly, and cold start from zero",
        "",
        f"Tiny Llama on `modelyard serve --engine accelerate` (CPU), chat completions of {MAX_TOKENS} tokens, one at "
        f"a time, {ROUNDS} alternating pairs (direct, through `modelyard gateway`) after {WARMUP} warm-up pairs; "
        "streaming is timed to the last byte. Latency in ms (p50 / p95). The replica runs on half the cores "
        f"({len(_cores()[0])}, with as many torch threads), the gateway and this client on the other half: in a "
        "cluster the gateway is its own pod and takes no CPU from the replica. Gateway CPU is the gateway process's "
        "own user+system CPU per request (psutil), which shared-CPU noise does not blur; most of a streamed "
        "request's share is the kernel's loopback writes, one per relayed chunk.",
        "",
        "| requests | pairs | direct p50 / p95 | gateway p50 / p95 | overhead p50 / p95 | median of paired differences | gateway CPU per request |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(_row(name, *rows[name]) for name in ("non-streaming", "streaming")),
        "",
        f"Cold start from zero (`modelyard up`, Model at minReplicas 0): the first request was held and answered after "
        f"**{held:.1f} s**; starting `modelyard serve` by hand and sending the same request took {by_hand:.1f} s "
        f"in the same run (ratio {held / by_hand:.2f}).",
    ]
    return "\n".join(lines) + "\n"
