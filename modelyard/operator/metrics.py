"""The operator's Prometheus metrics (names are a contract: the chart's dashboard and alerts use them)."""
from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

from modelyard.operator.status import PHASES

MODELS = Gauge("modelyard_operator_models", "Models by phase.", ["phase"])
RECONCILE_SECONDS = Histogram(
    "modelyard_operator_reconcile_duration_seconds", "Time of one reconcile pass.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DOWNLOAD_BYTES = Gauge("modelyard_operator_download_bytes", "Bytes downloaded so far.", ["namespace", "model"])
DOWNLOAD_TOTAL = Gauge("modelyard_operator_download_total_bytes", "Bytes to download.", ["namespace", "model"])
CONVERT_SECONDS = Histogram(
    "modelyard_operator_convert_duration_seconds", "Time from convert start to Converted.",
    buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
STEP_SECONDS = Gauge("modelyard_operator_step_seconds", "Time spent in each step (download, convert, load).", ["namespace", "model", "step"])
ERRORS = Counter("modelyard_operator_errors_total", "Failures by reason.", ["reason"])
PLANNED_GPU_BYTES = Gauge("modelyard_operator_planned_gpu_memory_bytes", "Planned memory per GPU.", ["namespace", "model"])

_phases: dict[tuple[str, str], str] = {}
_step_started: dict[tuple[str, str], tuple[str, float]] = {}
STEP_OF_PHASE = {"Downloading": "download", "Converting": "convert", "Deploying": "load"}


def observe_model(namespace: str, name: str, status: dict) -> None:
    key = (namespace, name)
    phase = status.get("phase", "Pending")
    _phases[key] = phase
    _refresh_phases()
    progress = status.get("progress") or {}
    if progress.get("step") == "download":
        DOWNLOAD_BYTES.labels(namespace, name).set(progress.get("bytesDone", 0))
        DOWNLOAD_TOTAL.labels(namespace, name).set(progress.get("bytesTotal", 0))
    per_gpu = (status.get("plan") or {}).get("perGpuBytes")
    if per_gpu:
        PLANNED_GPU_BYTES.labels(namespace, name).set(per_gpu)
    _time_steps(key, phase)


def _time_steps(key: tuple[str, str], phase: str) -> None:
    step = STEP_OF_PHASE.get(phase)
    current = _step_started.get(key)
    clock = time.monotonic()
    if current and current[0] != step:
        STEP_SECONDS.labels(*key, current[0]).set(clock - current[1])
        if current[0] == "convert" and phase != "Failed":
            CONVERT_SECONDS.observe(clock - current[1])
        _step_started.pop(key)
    if step and (not current or current[0] != step):
        _step_started[key] = (step, clock)
    elif step:
        STEP_SECONDS.labels(*key, step).set(clock - _step_started[key][1])


def _refresh_phases() -> None:
    counts = {p: 0 for p in PHASES}
    for phase in _phases.values():
        counts[phase] = counts.get(phase, 0) + 1
    for phase, n in counts.items():
        MODELS.labels(phase=phase).set(n)


def forget(namespace: str, name: str) -> None:
    if _phases.pop((namespace, name), None) is not None:
        _refresh_phases()
    _step_started.pop((namespace, name), None)
    for gauge in (DOWNLOAD_BYTES, DOWNLOAD_TOTAL, PLANNED_GPU_BYTES):
        try:
            gauge.remove(namespace, name)
        except KeyError:
            pass
