"""Status of an autoscaled Model (spec.scaling set): the gateway (or KEDA) owns the replica count,
so the operator reads it from the Deployment instead of enforcing spec.replicas, and the Model
stays Ready while it sits at zero or starts from zero (the gateway holds its requests meanwhile).

status.coldStart records the last start from zero ready replicas as the operator saw it
(``startedAt``, then ``seconds`` once a replica is ready); the gateway's
``modelyard_gateway_cold_start_seconds`` measures the same thing per request path, more finely.
"""
from __future__ import annotations

import datetime as dt

from modelyard.api import Model
from modelyard.operator.status import StatusBuilder


def start_replicas(model: Model) -> int:
    """The replica count a new Deployment is created with."""
    scaling = model.spec.scaling
    return model.spec.replicas if scaling is None else max(model.spec.replicas, scaling.min_replicas)


def current_replicas(model: Model, deployment: dict | None) -> int:
    """The count to keep on a Deployment that is replaced: the autoscaler's, not the spec's."""
    if deployment is None:
        return start_replicas(model)
    return int((deployment.get("spec") or {}).get("replicas", start_replicas(model)))


def _parse(ts: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return None


def cold_start(sb: StatusBuilder, current: int, ready: int) -> dict | None:
    """status.coldStart after this pass."""
    previous = dict(sb.previous.get("coldStart") or {})
    if current > 0 and ready == 0:
        if previous.get("startedAt") and "seconds" not in previous:
            return previous  # still starting
        return {"startedAt": sb.timestamp}
    if ready > 0 and previous.get("startedAt") and "seconds" not in previous:
        start, end = _parse(previous["startedAt"]), _parse(sb.timestamp)
        if start and end:
            return {**previous, "seconds": max(0.0, (end - start).total_seconds())}
    return previous or None


def autoscaled_status(model: Model, sb: StatusBuilder, current: int, ready: int, where: str) -> str:
    """Ready condition and phase for an autoscaled Model whose Deployment template is current."""
    sb.set("coldStart", cold_start(sb, current, ready))
    delay = model.spec.scaling.scale_down_delay_seconds
    if current == 0:
        sb.condition("Ready", True, "ScaledToZero", f"0 replicas after {delay}s idle; the gateway starts one "
                     f"on the next request and holds it meanwhile ({where})")
    elif ready == 0:
        sb.condition("Ready", True, "ColdStart", f"0/{current} replicas ready; starting from zero, requests are "
                     f"held by the gateway ({where})")
    else:
        sb.condition("Ready", True, "Ready", f"{ready}/{current} replicas serving at {where} (autoscaled "
                     f"{model.spec.scaling.min_replicas}..{model.spec.scaling.max_replicas})")
    return "Ready"
