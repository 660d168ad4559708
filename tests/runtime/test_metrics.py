"""The metric names are a contract with the chart's dashboard and alerts; GPU memory comes from
NVML at scrape time and is simply absent without a GPU."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelyard.runtime import gpu, metrics
from modelyard.runtime.metrics import ServingMetrics

CONTRACT = {
    "modelyard_request_duration_seconds", "modelyard_time_to_first_token_seconds",
    "modelyard_prompt_tokens_total", "modelyard_generation_tokens_total", "modelyard_requests_total",
    "modelyard_requests_in_flight", "modelyard_gpu_memory_used_bytes", "modelyard_gpu_memory_total_bytes",
    "modelyard_planned_gpu_memory_bytes", "modelyard_adapter_loaded", "modelyard_model_load_seconds",
    "modelyard_engine_info",
    "modelyard_batch_size",  # accelerate only
    "modelyard_engine_batching_info", "modelyard_batching_requests_total",  # accelerate only
    "modelyard_inter_token_latency_seconds",  # accelerate only
}


def _samples(m: ServingMetrics) -> dict:
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture(autouse=True)
def _fresh_nvml_probe():
    gpu.reset()
    yield
    gpu.reset()


def test_constants_are_the_contract_names():
    names = {getattr(metrics, n) for n in dir(metrics) if n.isupper() and isinstance(getattr(metrics, n), str)
             and getattr(metrics, n).startswith("modelyard_")}
    assert names == CONTRACT
    assert metrics.LATENCY_BUCKETS[0] <= 0.01 and metrics.LATENCY_BUCKETS[-1] >= 120


def _no_nvml_library(monkeypatch):
    """The real pynvml on a node without the NVIDIA driver: loading libnvidia-ml.so.1 fails. Forced,
    so the test means the same on a GPU machine."""
    import pynvml

    def missing(name, *a, **kw):
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "CDLL", missing)
    return pynvml


def test_no_nvml_library_means_no_gpu_series_and_no_crash(monkeypatch):
    pynvml = _no_nvml_library(monkeypatch)
    with pytest.raises(pynvml.NVMLError_LibraryNotFound):
        pynvml.nvmlInit()  # the real library's answer when the driver is absent
    gpu.reset()
    assert gpu.gpu_memory() == []
    samples = _samples(ServingMetrics("accelerate", "m"))
    assert not any(name.startswith("modelyard_gpu_memory") for name, _ in samples)
    assert ("modelyard_engine_info", (("engine", "accelerate"), ("model", "m"))) in samples


class _NvmlWithTwoGpus:
    """Stands in for pynvml on a 2-GPU node (no GPU here): same function names and return shapes."""
    NVMLError = type("NVMLError", (Exception,), {})

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=(handle + 1) * 10 * 2**30, total=80 * 2**30, free=0)

    def nvmlDeviceGetUUID(self, handle):
        return f"GPU-{handle}aaaaaaa-0000"


def test_gpu_memory_per_gpu_at_scrape_time(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(gpu, "_nvml", lambda: _NvmlWithTwoGpus())
    samples = _samples(ServingMetrics("vllm", "m", planned_gpu_bytes=5))
    assert samples[("modelyard_gpu_memory_used_bytes", (("gpu", "1"),))] == 20 * 2**30
    assert samples[("modelyard_gpu_memory_total_bytes", (("gpu", "0"),))] == 80 * 2**30
    assert samples[("modelyard_planned_gpu_memory_bytes", ())] == 5


@pytest.mark.parametrize("visible, shown", [("", []), ("-1", []), ("1", [1]), ("0,1", [0, 1]),
                                             ("GPU-1aaa", [1]), ("GPU-0aaaaaaa-0000,GPU-1", [0, 1])])
def test_gpu_series_only_for_the_gpus_cuda_visible_devices_allows(monkeypatch, visible, shown):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setattr(gpu, "_nvml", lambda: _NvmlWithTwoGpus())
    assert [g.index for g in gpu.gpu_memory()] == shown


def test_requests_tokens_and_adapters_follow_calls():
    m = ServingMetrics("accelerate", "base")
    assert not any(n == "modelyard_planned_gpu_memory_bytes" for n, _ in _samples(m))
    m.request_done("base", "completions", 200, 0.3)
    m.request_done("base", "completions", 400, 0.001)
    m.tokens("base", prompt=7, generated=5)
    m.first_token("base", 0.02)
    m.adapter_added("sql")
    s = _samples(m)
    assert s[("modelyard_requests_total", (("code", "200"), ("endpoint", "completions"), ("model", "base")))] == 1
    assert s[("modelyard_request_duration_seconds_count", (("endpoint", "completions"), ("model", "base")))] == 2
    assert s[("modelyard_prompt_tokens_total", (("model", "base"),))] == 7
    assert s[("modelyard_generation_tokens_total", (("model", "base"),))] == 5
    assert s[("modelyard_adapter_loaded", (("adapter", "sql"),))] == 1
    m.adapter_removed("sql")
    m.adapter_removed("never-loaded")  # harmless
    assert ("modelyard_adapter_loaded", (("adapter", "sql"),)) not in _samples(m)
