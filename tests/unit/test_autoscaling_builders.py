"""KEDA ScaledObject and InferencePool builders, checked against the projects' real CRD schemas
(tests/fixtures/crds: structural schema, enums and CEL rules), and their place in a reconcile."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelyard.operator.decide import decide
from modelyard.operator.resources import Settings, build_inference_pool, build_scaled_object
from tests.k8s.validation import validate_against_crd
from tests.unit.test_decide import PLAN, model
from tests.unit.test_decide_scaling import SCALING, observed

CRDS = Path(__file__).resolve().parents[1] / "fixtures" / "crds"
KEDA = Settings(autoscaler="keda", keda={"prometheusAddress": "http://prom.monitoring.svc:9090"})
POOL = Settings(inference_pool={"enabled": True, "endpointPicker": {"name": "vllm-epp", "port": 9002}})


def crd(name: str) -> dict:
    return yaml.safe_load((CRDS / name).read_text())


def test_scaled_object_reads_like_the_spec_and_passes_the_keda_crd():
    m = model(scaling={**SCALING, "targetInFlight": 6})
    so = build_scaled_object(m, KEDA, "vllm")
    assert validate_against_crd(crd("keda.sh_scaledobjects.yaml"), so) == []
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tiny"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"], spec["cooldownPeriod"]) == (0, 3, 45)
    [trigger] = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metadata"]["threshold"] == "6"
    assert trigger["metadata"]["serverAddress"] == "http://prom.monitoring.svc:9090"
    query = trigger["metadata"]["query"]
    assert "vllm:num_requests_waiting" in query and "vllm:num_requests_running" in query
    assert 'namespace="ns"' in query and 'pod=~"tiny-' in query
    assert so["metadata"]["ownerReferences"][0]["kind"] == "Model"


def test_scaled_object_for_accelerate_uses_modelyards_in_flight_gauge():
    so = build_scaled_object(model(scaling=SCALING), KEDA, "accelerate")
    assert "modelyard_requests_in_flight" in so["spec"]["triggers"][0]["metadata"]["query"]
    assert validate_against_crd(crd("keda.sh_scaledobjects.yaml"), so) == []


def test_no_scaled_object_without_scaling():
    assert build_scaled_object(model(), KEDA, "vllm") is None


def test_a_bad_scaled_object_is_caught_by_the_crd():
    so = build_scaled_object(model(scaling=SCALING), KEDA, "vllm")
    del so["spec"]["scaleTargetRef"]
    assert validate_against_crd(crd("keda.sh_scaledobjects.yaml"), so)


def test_inference_pool_selects_the_serving_pods_and_passes_its_crd():
    pool = build_inference_pool(model(), POOL)
    assert validate_against_crd(crd("inference.networking.k8s.io_inferencepools.yaml"), pool) == []
    assert pool["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "tiny"
    assert pool["spec"]["targetPorts"] == [{"number": 8000}]
    assert pool["spec"]["endpointPickerRef"]["name"] == "vllm-epp"
    assert build_inference_pool(model(), Settings()) is None


@pytest.mark.parametrize("settings,kinds", [
    (Settings(), []),
    (KEDA, ["ScaledObject"]),
    (POOL, ["InferencePool"]),
])
def test_reconcile_creates_what_the_settings_ask_for(settings, kinds):
    m = model(scaling=SCALING)
    d = decide(m, {"phase": "Ready"}, observed(m, replicas=1, ready=1), settings, "24GiB")
    assert [a.obj["kind"] for a in d.actions if a.verb == "create"] == kinds
    assert d.status["phase"] == "Ready"


def test_settings_come_from_the_chart_config():
    s = Settings.from_dict({"autoscaler": "keda", "keda": {"prometheusAddress": "http://p:9090"},
                            "inferencePool": {"enabled": True}})
    assert (s.autoscaler, s.keda["prometheusAddress"], s.inference_pool["enabled"]) == ("keda", "http://p:9090", True)
    assert PLAN["engine"] == "vllm"
