"""Pure builders for clusters that scale with KEDA or route with the Gateway API Inference
Extension instead of (or beside) `modelyard gateway`.

``build_scaled_object``: a KEDA ScaledObject (keda.sh/v1alpha1) on the Model's Deployment, from
spec.scaling, with a Prometheus trigger on the load of the Model's pods: vLLM's running + waiting
requests (``vllm:num_requests_running`` + ``vllm:num_requests_waiting``) on the vLLM engine,
``modelyard_requests_in_flight`` (exported by every engine) otherwise; threshold targetInFlight.
KEDA cannot hold requests: at minReplicas 0 the first requests fail until a replica is up, which
is what the gateway is for.

``build_inference_pool``: an InferencePool (inference.networking.k8s.io/v1) selecting the Model's
serving pods, for an Endpoint Picker (LoRA affinity, prefix-cache scoring) the user runs.
"""
from __future__ import annotations

from modelyard.api import Model
from modelyard.operator.resources.common import Settings, digest, metadata, selector

DEFAULT_PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"
DEFAULT_POLLING_S = 15


def load_query(model: Model, engine: str) -> str:
    pods = f'namespace="{model.namespace}",pod=~"{model.name}-[a-z0-9]+-[a-z0-9]+"'
    if engine == "vllm":
        return (f"sum(vllm:num_requests_running{{{pods}}} or vector(0)) + "
                f"sum(vllm:num_requests_waiting{{{pods}}} or vector(0))")
    return f"sum(modelyard_requests_in_flight{{{pods}}} or vector(0))"


def build_scaled_object(model: Model, settings: Settings, engine: str) -> dict | None:
    """The ScaledObject for an autoscaled Model, or None when spec.scaling is absent."""
    scaling = model.spec.scaling
    if scaling is None:
        return None
    keda = settings.keda
    spec = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": model.name},
        "minReplicaCount": scaling.min_replicas,
        "maxReplicaCount": scaling.max_replicas,
        "cooldownPeriod": scaling.scale_down_delay_seconds,
        "pollingInterval": int(keda.get("pollingInterval", DEFAULT_POLLING_S)),
        "triggers": [{
            "type": "prometheus",
            "name": "in-flight",
            "metricType": "AverageValue",
            "metadata": {
                "serverAddress": keda.get("prometheusAddress", DEFAULT_PROMETHEUS),
                "query": load_query(model, engine),
                "threshold": str(scaling.target_in_flight),
                "activationThreshold": "0",
            },
        }],
    }
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": metadata(model, model.name, "server", digest({"spec": spec})), "spec": spec}


def build_inference_pool(model: Model, settings: Settings) -> dict | None:
    """The InferencePool for the Model's serving pods, or None unless enabled in the settings."""
    pool = settings.inference_pool
    if not pool.get("enabled"):
        return None
    picker = pool.get("endpointPicker") or {}
    spec = {
        "selector": {"matchLabels": selector(model, "server")},
        "targetPorts": [{"number": model.spec.serving.port}],
        "endpointPickerRef": {
            "name": picker.get("name", f"{model.name}-epp"),
            "port": {"number": int(picker.get("port", 9002))},
            "failureMode": picker.get("failureMode", "FailClose"),
        },
    }
    return {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": metadata(model, model.name, "server", digest({"spec": spec})), "spec": spec}
