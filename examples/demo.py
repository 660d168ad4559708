"""`make demo`: the whole local pipeline on CPU in about a minute, no network, no GPU.

1. builds a random tiny Llama (offline tokenizer, chat template) into .demo/tiny-llama if absent;
2. runs `modelyard up -f examples/tiny.yaml --port <free>` as a child process;
3. waits for /health, sends one chat completion, prints the answer and a few /metrics lines;
4. stops `up` with SIGINT (as Ctrl-C would) and exits 0.

The tiny model's weights are random: expect gibberish, served for real.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / ".demo" / "tiny-llama"
MODEL_YAML = ROOT / "examples" / "tiny.yaml"
METRICS = ("modelyard_requests_total", "modelyard_time_to_first_token_seconds_sum",
           "modelyard_time_to_first_token_seconds_count", "modelyard_generation_tokens_total")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_model() -> None:
    if (MODEL_DIR / "config.json").is_file():
        print(f"demo: using the tiny model in {MODEL_DIR}")
        return
    from modelyard.runtime.tiny import make_tiny_llama

    print(f"demo: building a tiny Llama into {MODEL_DIR} (offline)")
    make_tiny_llama(MODEL_DIR)


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: `modelyard up` exited with {proc.returncode} before serving")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"demo: not healthy after {timeout:.0f}s")


def ask(url: str) -> None:
    question = "Hello! How are you today?"
    r = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": "tiny", "messages": [{"role": "user", "content": question}], "max_tokens": 24,
        "temperature": 0.8, "seed": 1})
    r.raise_for_status()
    body = r.json()
    print(f"\ndemo: user: {question}\ndemo: tiny: {body['choices'][0]['message']['content']!r}"
          "  (random weights, so the words are noise; the pipeline is what is real)")
    print(f"demo: usage {body['usage']}")
    lines = [ln for ln in httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
             if ln.startswith(METRICS)]
    print("demo: /metrics\n  " + "\n  ".join(lines) + "\n")


def main() -> int:
    os.chdir(ROOT)
    ensure_model()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    exe = Path(sys.executable).with_name("modelyard")
    cmd = [str(exe), "up", "-f", str(MODEL_YAML.relative_to(ROOT)), "--port", str(port), "--workdir", ".demo/work"]
    print(f"demo: {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd)
    try:
        wait_healthy(proc, url)
        ask(url)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    print(f"demo: `modelyard up` stopped with exit code {proc.returncode}")
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
