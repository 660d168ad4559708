"""A real `modelyard gateway` process for the gateway tests, and small request helpers."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import yaml

from tests.runtime.accelerate_helpers import MODELYARD, free_port


class GatewayProcess:
    def __init__(self, routes: list[dict], workdir: Path, *flags: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / f"routes-{self.port}.yaml"
        self.config.write_text(yaml.safe_dump({"models": routes}))
        self.log = workdir / f"gateway-{self.port}.log"
        self.proc = subprocess.Popen([MODELYARD, "gateway", "--config", str(self.config), "--host", "127.0.0.1",
                                      "--port", str(self.port), "--probe-interval", "0.5", *flags],
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    def wait_routable(self, names: list[str], timeout: float = 60) -> "GatewayProcess":
        """Until a request for each name would find a ready replica (probed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"gateway exited with {self.proc.returncode}:\n{self.log.read_text()}"
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    ready = {re.search(r'model="([^"]+)"', s).group(1) for s in httpx.get(self.url + "/metrics").text.splitlines()
                             if s.startswith("modelyard_gateway_replicas_ready{") and not s.endswith(" 0.0")}
                    if set(names) <= ready:
                        return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"gateway not routable for {names} after {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def chat(url: str, model: str, text: str = "Hello!", max_tokens: int = 8, headers: dict | None = None,
         timeout: float = 300, **extra) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
            "temperature": 0, **extra}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=timeout, headers=headers)
