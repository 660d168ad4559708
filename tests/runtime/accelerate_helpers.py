"""Shared by the accelerate serving tests: a tiny model with LoRA adapters, a real
`modelyard serve` subprocess on a free port, and a Prometheus text parser."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from modelyard.runtime.tiny import make_tiny_adapter as make_adapter  # noqa: F401  (the tests' name for it)

MODELYARD = str(Path(sys.executable).with_name("modelyard"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# These servers test the CPU path: no GPU may be used or reported, on any machine (CUDA and the
# NVML series both honour an empty CUDA_VISIBLE_DEVICES).
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": ""}


class Server:
    """`modelyard serve` in a subprocess; ``statuses`` records what /health answered while starting."""

    def __init__(self, args: list[str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.statuses: list[int] = []
        cmd = [MODELYARD, "serve", *args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                     env={**os.environ, **CPU_ONLY, "TOKENIZERS_PARALLELISM": "false"})

    def wait_healthy(self, timeout: float = 120) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"modelyard serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                code = httpx.get(f"{self.url}/health", timeout=2).status_code
                self.statuses.append(code)
                if code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"modelyard serve not healthy after {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        """SIGTERM, as the kubelet sends it: the server must exit by itself, promptly, with 0 or by
        the signal itself (uvicorn shuts down gracefully, then re-raises SIGTERM: exit code 143 in
        a pod). A thread left running would keep a pod in Terminating for its grace period."""
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"modelyard serve still running 20 s after SIGTERM:\n{self.log.read_text()[-3000:]}")
        assert code in (0, -signal.SIGTERM), f"modelyard serve exited with {code} on SIGTERM:\n{self.log.read_text()[-3000:]}"


def scrape(url: str) -> dict[tuple, float]:
    """/metrics as {(sample name, sorted label items): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(metrics: dict, name: str, **labels) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def sse_events(response: httpx.Response) -> list:
    """Parse an SSE body into JSON objects; the final ``[DONE]`` is returned as the string."""
    import json

    events = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: "):]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events
