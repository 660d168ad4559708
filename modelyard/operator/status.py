"""Kubernetes-style status: conditions whose lastTransitionTime moves only on a flip. Pure."""
from __future__ import annotations

import copy
import datetime as dt
import json

from modelyard.uri import scrub

PHASES = ("Pending", "Downloading", "Converting", "Deploying", "Ready", "Failed")
CONDITION_TYPES = ("Planned", "Downloaded", "Converted", "Ready", "Degraded")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class StatusBuilder:
    """Accumulates one reconcile pass's status from the previous one."""

    def __init__(self, previous: dict | None, generation: int | None, timestamp: str | None = None):
        self.previous = copy.deepcopy(previous or {})
        self.status = copy.deepcopy(previous or {})
        self.status.pop("kopf", None)
        self.generation = generation
        self.timestamp = timestamp or now()
        self._conditions = {c["type"]: c for c in self.status.get("conditions", [])}
        self.touched: set[str] = set()

    def condition(self, type_: str, status: bool | None, reason: str, message: str) -> None:
        value = "Unknown" if status is None else ("True" if status else "False")
        old = self._conditions.get(type_)
        changed = old is None or old.get("status") != value
        self._conditions[type_] = {
            "type": type_,
            "status": value,
            "reason": reason,
            "message": scrub(message),  # a URI in a message never carries its credentials
            "observedGeneration": self.generation,
            "lastTransitionTime": self.timestamp if changed else old.get("lastTransitionTime", self.timestamp),
        }
        self.touched.add(type_)

    def get(self, type_: str) -> dict | None:
        return self._conditions.get(type_)

    def set(self, key: str, value) -> None:
        if value is None:
            self.status.pop(key, None)
        else:
            self.status[key] = value

    def build(self, phase: str) -> dict:
        assert phase in PHASES, phase
        self.status["phase"] = phase
        self.status["observedGeneration"] = self.generation
        order = {t: i for i, t in enumerate(CONDITION_TYPES)}
        self.status["conditions"] = sorted(self._conditions.values(), key=lambda c: order.get(c["type"], 99))
        return self.status

    def transitions(self) -> list[dict]:
        """Conditions whose status or reason changed in this pass (each becomes an Event)."""
        before = {c["type"]: c for c in self.previous.get("conditions", [])}
        out = []
        for cond in self.status.get("conditions", []):
            old = before.get(cond["type"])
            if old is None or (old.get("status"), old.get("reason")) != (cond["status"], cond["reason"]):
                out.append(cond)
        return out


def changed(old: dict | None, new: dict) -> bool:
    strip = lambda s: json.dumps({k: v for k, v in (s or {}).items() if k != "kopf"}, sort_keys=True)  # noqa: E731
    return strip(old) != strip(new)
