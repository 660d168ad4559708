"""A real Prometheus server for tests, and the PromQL the chart ships (dashboard and alerts).

``start_prometheus(workdir, scrape)`` writes a config with a 1 s scrape interval, starts
`prometheus` (Debian 2.42, from PATH or .tools/bin) on a free port with its TSDB in ``workdir``,
polls /-/ready, yields a ``Prometheus`` handle and stops the server. Not starting is an error.
"""
from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "modelyard" / "dashboards" / "modelyard.json"


def tool(name: str) -> str:
    found = shutil.which(name) or (ROOT / ".tools" / "bin" / name)
    if not Path(found).exists():
        raise AssertionError(f"{name} not found on PATH or in .tools/bin: run `make tools`")
    return str(found)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Prometheus:
    url: str
    log: Path

    def api(self, path: str, **params) -> dict:
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = r.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        return data["result"]

    def values(self, expr: str) -> list[float]:
        return [float(s["value"][1]) for s in self.query(expr)]

    def wait_for(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(0.25)
        raise AssertionError(f"Prometheus: {what} not seen within {timeout:.0f}s (last: {last!r})")


def write_config(path: Path, scrape: list[dict], rule_files: list[str] = ()) -> Path:
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
              "rule_files": list(rule_files), "scrape_configs": scrape}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.contextmanager
def start_prometheus(workdir: Path, scrape: list[dict], rule_files: list[str] = ()):
    port = free_port()
    config = write_config(workdir / "prometheus.yml", scrape, rule_files)
    log = workdir / "prometheus.log"
    cmd = [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
           f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready in 30s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield Prometheus(url, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", [])]


def dashboard_variables() -> dict[str, str]:
    return {v["name"]: v["definition"] for v in dashboard()["templating"]["list"] if v["type"] == "query"}


def substitute(expr: str, namespace: str, model: str, rate_interval: str = "5m") -> str:
    """What Grafana sends for one selected namespace and model."""
    return (expr.replace("$__rate_interval", rate_interval)
            .replace("$namespace", re.escape(namespace)).replace("$model", re.escape(model)))


def metric_names(expr: str) -> set[str]:
    """Series names in a PromQL expression, histogram suffixes removed (modelyard_, vllm:, kube_)."""
    names = re.findall(r"(modelyard_[a-z0-9_]+|vllm:[a-z0-9_]+|kube_[a-z0-9_]+)", expr)
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def finite(values: list[float]) -> bool:
    return any(not math.isnan(v) and not math.isinf(v) for v in values)
