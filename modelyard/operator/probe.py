"""Ask running serving pods which adapters they have loaded.

Read from the pod's ``/metrics`` (``modelyard_adapter_loaded{adapter="..."} 1``, both engines),
not ``/v1/models``: ``/metrics`` stays open when the Model has API keys
(``spec.serving.auth``), so the operator needs no key and no RBAC on Secrets to probe."""
from __future__ import annotations

import logging
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)
TIMEOUT = 2.0
ADAPTER_LOADED = "modelyard_adapter_loaded"  # runtime/metrics.py's contract (the operator never imports runtime)


def _ready(pod: dict) -> bool:
    status = pod.get("status") or {}
    conds = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    return status.get("phase") == "Running" and bool(status.get("podIP")) and conds.get("Ready", "True") == "True"


def loaded_from_metrics(text: str) -> list[str]:
    return [s.labels["adapter"] for fam in text_string_to_metric_families(text) if fam.name == ADAPTER_LOADED
            for s in fam.samples if s.value == 1 and s.labels.get("adapter")]


def _loaded(url: str) -> list[str] | None:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            return loaded_from_metrics(resp.read().decode("utf-8", "replace"))
    except (OSError, ValueError) as exc:
        log.debug("probe %s: %s", url, exc)
        return None


def adapters_loaded(pods: list[dict], port: int) -> dict[str, int]:
    """adapter name -> how many ready pods report it loaded."""
    urls = [f"http://{p['status']['podIP']}:{port}/metrics" for p in pods if _ready(p)]
    counts: Counter[str] = Counter()
    if not urls:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(urls))) as pool:
        for names in pool.map(_loaded, urls):
            counts.update(names or [])
    return dict(counts)
