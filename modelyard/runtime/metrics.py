"""Prometheus metrics of a serving pod. The names below are a CONTRACT: the chart's Grafana
dashboard and alert rules query them, and every engine (accelerate, vllm) exports the same ones.

``ServingMetrics`` owns its registry so one process can hold several (tests) and the text at
``/metrics`` has only these series. GPU memory comes from NVML at scrape time
(``GpuMemoryCollector``); without a GPU those series are simply absent.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily

from modelyard.runtime import gpu

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REQUEST_DURATION = "modelyard_request_duration_seconds"
TIME_TO_FIRST_TOKEN = "modelyard_time_to_first_token_seconds"
PROMPT_TOKENS = "modelyard_prompt_tokens_total"
GENERATION_TOKENS = "modelyard_generation_tokens_total"
REQUESTS = "modelyard_requests_total"
REQUESTS_IN_FLIGHT = "modelyard_requests_in_flight"
GPU_MEMORY_USED = "modelyard_gpu_memory_used_bytes"
GPU_MEMORY_TOTAL = "modelyard_gpu_memory_total_bytes"
PLANNED_GPU_MEMORY = "modelyard_planned_gpu_memory_bytes"
ADAPTER_LOADED = "modelyard_adapter_loaded"
MODEL_LOAD_SECONDS = "modelyard_model_load_seconds"
ENGINE_INFO = "modelyard_engine_info"
# Engine-specific (accelerate): how many requests each generate() call served together.
BATCH_SIZE = "modelyard_batch_size"
# Engine-specific (accelerate): which batching serves (continuous or static, and why), per request too.
BATCHING_INFO = "modelyard_engine_batching_info"
BATCHING_REQUESTS = "modelyard_batching_requests_total"
# Engine-specific (accelerate): time between consecutive generated tokens of one request.
INTER_TOKEN_LATENCY = "modelyard_inter_token_latency_seconds"

ENDPOINTS = ("completions", "chat_completions")

# LLM latencies span milliseconds (a cached first token) to minutes (long generations).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _strip_total(name: str) -> str:
    # prometheus_client appends ``_total`` to counters itself.
    return name[: -len("_total")] if name.endswith("_total") else name


class GpuMemoryCollector:
    """Yields per-GPU used/total memory at scrape time; nothing when there is no GPU."""

    def collect(self):
        devices = gpu.gpu_memory()
        if not devices:
            return
        used = GaugeMetricFamily(GPU_MEMORY_USED, "GPU memory in use (NVML), bytes", labels=["gpu"])
        total = GaugeMetricFamily(GPU_MEMORY_TOTAL, "GPU memory size (NVML), bytes", labels=["gpu"])
        for dev in devices:
            used.add_metric([str(dev.index)], dev.used_bytes)
            total.add_metric([str(dev.index)], dev.total_bytes)
        yield used
        yield total

    def describe(self):
        return []  # series appear only when a GPU does


class ServingMetrics:
    """All series of one serving process, with small helpers the HTTP layer calls."""

    def __init__(self, engine: str, model: str, registry: CollectorRegistry | None = None,
                 planned_gpu_bytes: int | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.request_duration = Histogram(REQUEST_DURATION, "End-to-end request latency",
                                          ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram(TIME_TO_FIRST_TOKEN, "Time from request arrival to its first token",
                              ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.prompt_tokens = Counter(_strip_total(PROMPT_TOKENS), "Prompt tokens processed",
                                     ["model"], registry=r)
        self.generation_tokens = Counter(_strip_total(GENERATION_TOKENS), "Tokens generated",
                                         ["model"], registry=r)
        self.requests = Counter(_strip_total(REQUESTS), "Requests by HTTP status code",
                                ["model", "endpoint", "code"], registry=r)
        self.in_flight = Gauge(REQUESTS_IN_FLIGHT, "Requests being served now", registry=r)
        self.adapter_loaded = Gauge(ADAPTER_LOADED, "1 for each LoRA adapter loaded", ["adapter"], registry=r)
        self.model_load_seconds = Gauge(MODEL_LOAD_SECONDS, "Seconds the model took to load", registry=r)
        self.batch_size = Histogram(BATCH_SIZE, "Requests served together: per generate() call (accelerate, static batching), "
                                    "per forward pass (accelerate, continuous batching) or per engine step (onnxruntime)",
                                    ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.itl = Histogram(INTER_TOKEN_LATENCY, "Time between consecutive generated tokens of a request "
                             "(accelerate engine)", ["model"], buckets=ITL_BUCKETS, registry=r)
        self.batching_requests = Counter(_strip_total(BATCHING_REQUESTS),
                                         "Requests by batching path (accelerate engine); reason: why static",
                                         ["model", "path", "reason"], registry=r)
        Info(ENGINE_INFO[: -len("_info")], "Serving engine and model", registry=r).info(
            {"engine": engine, "model": model})
        if planned_gpu_bytes is not None:
            Gauge(PLANNED_GPU_MEMORY, "GPU memory per GPU the planner expected, bytes",
                  registry=r).set(planned_gpu_bytes)
        r.register(GpuMemoryCollector())

    def request_done(self, model: str, endpoint: str, code: int, seconds: float | None = None) -> None:
        self.requests.labels(model=model, endpoint=endpoint, code=str(code)).inc()
        if seconds is not None:
            self.request_duration.labels(model=model, endpoint=endpoint).observe(seconds)

    def tokens(self, model: str, prompt: int, generated: int) -> None:
        self.prompt_tokens.labels(model=model).inc(prompt)
        self.generation_tokens.labels(model=model).inc(generated)

    def first_token(self, model: str, seconds: float) -> None:
        self.ttft.labels(model=model).observe(seconds)

    def inter_token(self, model: str, token_times: list[float]) -> None:
        """One observation per gap between consecutive token times (``time.perf_counter()``)."""
        series = self.itl.labels(model=model)
        for a, b in zip(token_times, token_times[1:]):
            series.observe(b - a)

    def batching_mode(self, mode: str, reason: str = "") -> None:
        """Once, when an engine that batches (accelerate) has loaded its model."""
        Info(BATCHING_INFO[: -len("_info")], "How the engine batches requests (continuous or static); "
             "reason: why continuous batching does not apply", registry=self.registry).info(
            {"mode": mode, "reason": reason})

    def batching_request(self, model: str, path: str, reason: str = "") -> None:
        self.batching_requests.labels(model=model, path=path, reason=reason).inc()

    def adapter_added(self, name: str) -> None:
        self.adapter_loaded.labels(adapter=name).set(1)

    def adapter_removed(self, name: str) -> None:
        try:
            self.adapter_loaded.remove(name)
        except KeyError:
            pass

    def render(self) -> bytes:
        return generate_latest(self.registry)
