"""Ask running serving pods which adapters they have loaded (GET /v1/models on the pod IP)."""
from __future__ import annotations

import json
import logging
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)
TIMEOUT = 2.0


def _ready(pod: dict) -> bool:
    status = pod.get("status") or {}
    conds = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    return status.get("phase") == "Running" and bool(status.get("podIP")) and conds.get("Ready", "True") == "True"


def _loaded(url: str) -> list[str] | None:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            data = json.load(resp)
    except (OSError, ValueError) as exc:
        log.debug("probe %s: %s", url, exc)
        return None
    return [m["id"] for m in data.get("data", []) if m.get("parent")]


def adapters_loaded(pods: list[dict], port: int) -> dict[str, int]:
    """adapter name -> how many ready pods report it loaded."""
    urls = [f"http://{p['status']['podIP']}:{port}/v1/models" for p in pods if _ready(p)]
    counts: Counter[str] = Counter()
    if not urls:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(urls))) as pool:
        for names in pool.map(_loaded, urls):
            counts.update(names or [])
    return dict(counts)
