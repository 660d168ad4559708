"""Operator throughput and memory against the Kubernetes API emulator.

1. 200 Models → time until every one has its `<name>-download` Job (the operator runs as a
   subprocess, `modelyard operator`, exactly as `make operator` starts it);
2. the floor: the same writes a Model needs, sent directly through the API by one client, same
   emulator, Model by Model in the operator's order: the Model POST, the cache PVC, the Job, the
   status patch and the Events (the very bodies the operator wrote in step 1);
3. the operator's peak RSS (VmHWM) once it serves 1,000 Models, vs. after its first Model.

The emulator (`python -m tests.k8s`) is a separate process too; Jobs are counted from a watch
stream, so no polling load is added to the server.
"""
from __future__ import annotations

import copy
import http.client
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import yaml

REPO = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent
N_TIMED = 200
N_TOTAL = 1000
WAIT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, method: str = "GET", body: dict | None = None,
             content_type: str = "application/json") -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


class JobWatch(threading.Thread):
    """Counts `<name>-download` Jobs appearing in a namespace, from a watch stream."""

    def __init__(self, url: str, namespace: str, expected: set[str]) -> None:
        super().__init__(daemon=True)
        self.url, self.namespace, self.expected = url, namespace, set(expected)
        self.seen: dict[str, float] = {}
        self.done = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        path = f"/apis/batch/v1/namespaces/{self.namespace}/jobs?watch=true&timeoutSeconds={WAIT_S}"
        with urllib.request.urlopen(self.url + path, timeout=WAIT_S + 10) as stream:
            self.ready.set()
            for line in stream:
                event = json.loads(line)
                name = event["object"]["metadata"]["name"]
                if event["type"] == "ADDED" and name in self.expected:
                    self.seen.setdefault(name, time.perf_counter())
                    if len(self.seen) == len(self.expected):
                        self.done.set()
                        return

    def wait(self, proc: subprocess.Popen | None = None) -> float | None:
        """When the last expected Job appeared (perf_counter); None on timeout or a dead operator."""
        deadline = time.monotonic() + WAIT_S
        while not self.done.wait(0.5):
            if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
                return None
        return max(self.seen.values())


class Cluster:
    """The emulator subprocess, its kubeconfig, and plain-HTTP helpers."""

    def __init__(self, workdir: pathlib.Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.kubeconfig = workdir / "kubeconfig"
        self.log = open(workdir / "emulator.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.k8s", "--port", str(self.port), "--kubeconfig", str(self.kubeconfig),
             "--crd", str(REPO / "crds" / "models.modelyard.io.yaml")],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + 30
        while True:
            try:
                _request(self.url + "/version")
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"the emulator did not start; see {self.log.name}")
                time.sleep(0.1)

    def namespace(self, name: str) -> None:
        _request(self.url + "/api/v1/namespaces", "POST", {"metadata": {"name": name}})

    def create(self, path: str, body: dict) -> dict:
        return _request(self.url + path, "POST", body)

    def jobs(self, ns: str) -> list[dict]:
        return _request(self.url + f"/apis/batch/v1/namespaces/{ns}/jobs")["items"]

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(15)
        self.log.close()


def _model(name: str, ns: str) -> dict:
    model = yaml.safe_load((REPO / "examples" / "llama-8b.yaml").read_text())
    model["metadata"] = {"name": name, "namespace": ns}
    return model


def _create_models(cluster: Cluster, ns: str, names: list[str]) -> tuple[JobWatch, float]:
    watch = JobWatch(cluster.url, ns, {f"{n}-download" for n in names})
    watch.start()
    watch.ready.wait(10)
    start = time.perf_counter()
    for name in names:
        cluster.create(f"/apis/modelyard.io/v1alpha1/namespaces/{ns}/models", _model(name, ns))
    return watch, start


def _timed_models(cluster: Cluster, ns: str, names: list[str], operator: subprocess.Popen) -> float | None:
    watch, start = _create_models(cluster, ns, names)
    end = watch.wait(operator)
    return None if end is None else end - start


def _copy(obj: dict, ns: str) -> dict:
    body = copy.deepcopy(obj)
    body.pop("status", None)
    body["metadata"] = {k: v for k, v in body["metadata"].items()
                        if k in ("name", "labels", "annotations")} | {"namespace": ns}
    return body


def _floor_writes(cluster: Cluster, src: str, ns: str, names: list[str]) -> list[tuple[str, str, dict, str]]:
    """(method, path, body, content type) of every write the operator's Models needed, re-aimed at ``ns``."""
    get = lambda path: _request(cluster.url + path)["items"]  # noqa: E731
    pvcs = {o["metadata"]["name"]: o for o in get(f"/api/v1/namespaces/{src}/persistentvolumeclaims")}
    jobs = {o["metadata"]["name"]: o for o in get(f"/apis/batch/v1/namespaces/{src}/jobs")}
    models = {o["metadata"]["name"]: o for o in get(f"/apis/modelyard.io/v1alpha1/namespaces/{src}/models")}
    events: dict[str, list[dict]] = {}
    for ev in get(f"/api/v1/namespaces/{src}/events"):
        events.setdefault(ev["involvedObject"]["name"], []).append(ev)
    writes, json_ct, merge = [], "application/json", "application/merge-patch+json"
    models_path = f"/apis/modelyard.io/v1alpha1/namespaces/{ns}/models"
    for name in names:
        writes.append(("POST", models_path, _model(name, ns), json_ct))
        if f"{name}-cache" in pvcs:
            writes.append(("POST", f"/api/v1/namespaces/{ns}/persistentvolumeclaims", _copy(pvcs[f"{name}-cache"], ns), json_ct))
        writes.append(("POST", f"/apis/batch/v1/namespaces/{ns}/jobs", _copy(jobs[f"{name}-download"], ns), json_ct))
        writes.append(("PATCH", f"{models_path}/{name}/status", {"status": models[name]["status"]}, merge))
        for ev in events.get(name, []):
            body = {k: v for k, v in ev.items() if k not in ("metadata", "involvedObject")}
            body["metadata"] = {"generateName": f"{name}.", "namespace": ns}
            body["involvedObject"] = {**ev["involvedObject"], "namespace": ns}
            writes.append(("POST", f"/api/v1/namespaces/{ns}/events", body, json_ct))
    return writes


def _floor(cluster: Cluster, writes: list[tuple[str, str, dict, str]], ns: str) -> float | None:
    """The same writes, sent straight to the API by one client, one after the other, over one
    kept-alive connection (as the operator's client pool keeps its connections)."""
    expected = {w[2]["metadata"]["name"] for w in writes if w[1].endswith("/jobs")}
    watch = JobWatch(cluster.url, ns, expected)
    watch.start()
    watch.ready.wait(10)
    conn = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=30)
    start = time.perf_counter()
    for method, path, body, content_type in writes:
        conn.request(method, path, json.dumps(body), {"Content-Type": content_type})
        resp = conn.getresponse()
        if resp.status >= 300:
            raise RuntimeError(f"floor: {method} {path} answered {resp.status}: {resp.read()[:300]!r}")
        json.loads(resp.read())
    end = watch.wait()
    conn.close()
    return None if end is None else end - start


def _cpu_s(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stats(cluster: Cluster) -> dict[str, int]:
    return _request(cluster.url + "/emulator/stats")


def _vm_hwm_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def _start_operator(cluster: Cluster, workdir: pathlib.Path) -> tuple[subprocess.Popen, object]:
    log = open(workdir / "operator.log", "w")
    proc = subprocess.Popen([str(BIN / "modelyard"), "operator", "--metrics-port", "0"], cwd=workdir,
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)})
    return proc, log


def _fmt(value: float | None, unit: str = "s") -> str:
    return "did not finish" if value is None else f"{value:.2f} {unit}"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}×"


def measure(workdir: pathlib.Path) -> dict:
    cluster = Cluster(workdir)
    operator, log = None, None
    try:
        for ns in ("bench-warm", "bench-ops", "bench-more", "bench-floor"):
            cluster.namespace(ns)
        operator, log = _start_operator(cluster, workdir)
        warm = _timed_models(cluster, "bench-warm", ["warmup"], operator)
        if warm is None:
            raise RuntimeError(f"the operator made no Job for a warm-up Model; see {workdir}/operator.log")
        rss_one = _vm_hwm_mib(operator.pid)
        names = [f"bench-{i:04d}" for i in range(N_TIMED)]
        cpu0, stats0 = (_cpu_s(operator.pid), _cpu_s(cluster.proc.pid)), _stats(cluster)
        ops = _timed_models(cluster, "bench-ops", names, operator)
        cpu_ops = (_cpu_s(operator.pid) - cpu0[0], _cpu_s(cluster.proc.pid) - cpu0[1])
        stats1 = _stats(cluster)
        calls = {k: v - stats0.get(k, 0) for k, v in stats1.items() if v - stats0.get(k, 0)}
        more = [f"more-{i:04d}" for i in range(N_TOTAL - N_TIMED - 1)]
        rest = _timed_models(cluster, "bench-more", more, operator)
        rss_all = _vm_hwm_mib(operator.pid)
        operator.send_signal(signal.SIGTERM)
        operator.wait(30)
        writes = _floor_writes(cluster, "bench-ops", "bench-floor", names)
        cpu1 = _cpu_s(cluster.proc.pid)
        floor = _floor(cluster, writes, "bench-floor")
        return {"ops": ops, "floor": floor, "rest": rest, "rss_one": rss_one, "rss_all": rss_all,
                "n_rest": len(more), "cpu_ops": cpu_ops, "floor_writes": len(writes), "cpu_floor": _cpu_s(cluster.proc.pid) - cpu1,
                "calls": calls, "load": os.getloadavg()[0]}
    finally:
        if operator is not None and operator.poll() is None:
            operator.kill()
            operator.wait(10)
        if log is not None:
            log.close()
        cluster.close()


TARGET_RATIO = 1.5
TARGET_RSS_MIB = 100


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp:
        r = measure(pathlib.Path(tmp))
    per_model = r["floor_writes"] / N_TIMED
    per_model_kib = (r["rss_all"] - r["rss_one"]) * 1024 / (N_TOTAL - 1)
    rows = [
        (f"floor: the same {r['floor_writes']} writes ({per_model:.1f} per Model) sent directly by one client",
         _fmt(r["floor"]), "1.00×"),
        ("operator: 200 Models → 200 `<name>-download` Jobs", _fmt(r["ops"]), _ratio(r["ops"], r["floor"])),
        (f"operator: {r['n_rest']} more Models → Jobs (1,000 in all)", _fmt(r["rest"]),
         _ratio(r["rest"], None if r["floor"] is None else r["floor"] * r["n_rest"] / N_TIMED)),
        ("operator peak RSS (VmHWM) after its first Model", _fmt(r["rss_one"], "MiB"), "1.00×"),
        ("operator peak RSS (VmHWM) with 1,000 Models", _fmt(r["rss_all"], "MiB"), _ratio(r["rss_all"], r["rss_one"])),
        ("operator memory per Model ((peak with 1,000 − after the first) / 999)", f"{per_model_kib:.1f} KiB", ""),
    ]
    op_ms, api_ms = (1000 * c / N_TIMED for c in r["cpu_ops"])
    floor_ms = 1000 * r["cpu_floor"] / N_TIMED
    rows += [
        ("CPU per Model, floor: API server", f"{floor_ms:.1f} ms", "1.00×"),
        ("CPU per Model: operator + API server", f"{op_ms:.1f} + {api_ms:.1f} ms", _ratio(op_ms + api_ms, floor_ms)),
    ]
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    calls = ", ".join(f"{k} {v / N_TIMED:.1f}" for k, v in sorted(r["calls"].items(), key=lambda kv: -kv[1]))
    ratio = None if r["ops"] is None or not r["floor"] else r["ops"] / r["floor"]
    return (
        "## Operator: Models to download Jobs, and memory\n\n"
        "`modelyard operator` (subprocess, kopf, standalone) against the Kubernetes API emulator "
        "(`python -m tests.k8s`, its own process). Jobs are counted from a watch stream. The floor sends "
        "the writes a Model needs — the Model POST, the cache PVC, the Job, the status patch and the "
        "Events, the very bodies the operator wrote — one client, sequentially, Model by Model, same "
        "emulator, same run. "
        f"Targets: ≤ {TARGET_RATIO}× the floor ({_verdict(ratio is not None and ratio <= TARGET_RATIO)} "
        f"in this run); ≤ {TARGET_RSS_MIB} MiB peak RSS with 1,000 Models "
        f"({_verdict(r['rss_all'] <= TARGET_RSS_MIB)} in this run).\n\n"
        "| measure | value | ratio |\n| --- | --- | --- |\n" + table + "\n\n"
        f"API requests per Model during the 200-Model run (the client's own Model POST included): {calls}.\n"
        f"Load average at the end: {r['load']:.1f} on a shared machine — wall-clock times are noisy, "
        "CPU times less so.\n"
    )


if __name__ == "__main__":
    print(run())
