"""The operator with spec.scaling: it leaves the replica count to the gateway, keeps the Model
Ready at zero and during a cold start, and records the cold start in status."""
from __future__ import annotations

import copy

from modelyard.operator.decide import decide
from modelyard.operator.observe import Observed
from modelyard.operator.resources import base_dir, build_deployment, build_download_job, build_service
from tests.unit.test_decide import PLAN, S, cond, done_job, model

SCALING = {"minReplicas": 0, "maxReplicas": 3, "scaleDownDelaySeconds": 45}


def observed(m, replicas: int, ready: int, template_of=None):
    job, pods = done_job(build_download_job(m, S, "24GiB"), {"resolvedRevision": "abc", "plan": PLAN})
    dep = build_deployment(template_of or m, S, PLAN, base_dir(m))
    dep["metadata"]["generation"] = 1
    dep["spec"]["replicas"] = replicas
    dep["status"] = {"observedGeneration": 1, "replicas": replicas, "readyReplicas": ready,
                     "updatedReplicas": replicas, "availableReplicas": ready}
    return Observed(pvc={}, download_job=job, download_pods=pods, deployment=dep, service=build_service(m),
                    server_pods=[])


def test_new_deployment_starts_at_max_of_replicas_and_min():
    assert build_deployment(model(scaling=SCALING), S, PLAN, "/d")["spec"]["replicas"] == 1
    assert build_deployment(model(replicas=0, scaling=SCALING), S, PLAN, "/d")["spec"]["replicas"] == 0
    assert build_deployment(model(scaling={**SCALING, "minReplicas": 2}), S, PLAN, "/d")["spec"]["replicas"] == 2


def test_operator_does_not_fight_the_autoscaler():
    m = model(replicas=1, scaling=SCALING)
    d = decide(m, {"phase": "Ready"}, observed(m, replicas=3, ready=3), S, "24GiB")
    assert d.actions == []  # spec.replicas is 1, the gateway asked for 3: no scale action
    assert d.status["phase"] == "Ready" and d.status["replicas"] == 3
    assert "3/3 replicas serving" in cond(d.status, "Ready")["message"]


def test_replace_keeps_the_autoscalers_count():
    old = model(scaling=SCALING)
    new = model(scaling=SCALING, serving={"args": ["--enforce-eager"]})
    d = decide(new, {"phase": "Ready"}, observed(old, replicas=2, ready=2), S, "24GiB")
    [replace] = [a for a in d.actions if a.verb == "replace"]
    assert replace.obj["spec"]["replicas"] == 2


def test_scaled_to_zero_stays_ready_and_says_so():
    m = model(replicas=0, scaling=SCALING)
    d = decide(m, {"phase": "Ready"}, observed(m, replicas=0, ready=0), S, "24GiB")
    ready = cond(d.status, "Ready")
    assert d.status["phase"] == "Ready" and (ready["status"], ready["reason"]) == ("True", "ScaledToZero")
    assert "45s idle" in ready["message"]


def test_cold_start_is_recorded_from_start_to_first_ready_replica():
    m = model(replicas=0, scaling=SCALING)
    d1 = decide(m, {"phase": "Ready", "replicas": 0}, observed(m, replicas=1, ready=0), S, "24GiB")
    assert d1.status["phase"] == "Ready" and cond(d1.status, "Ready")["reason"] == "ColdStart"
    started = d1.status["coldStart"]["startedAt"]
    previous = copy.deepcopy(d1.status)
    previous["coldStart"]["startedAt"] = "2026-01-01T00:00:00Z"
    d2 = decide(m, previous, observed(m, replicas=1, ready=0), S, "24GiB")
    assert d2.status["coldStart"] == {"startedAt": "2026-01-01T00:00:00Z"} and started
    d3 = decide(m, d2.status, observed(m, replicas=1, ready=1), S, "24GiB")
    assert d3.status["coldStart"]["seconds"] > 0 and cond(d3.status, "Ready")["reason"] == "Ready"


def test_without_scaling_spec_replicas_is_enforced_as_before():
    m = model(replicas=2)
    d = decide(m, {"phase": "Ready"}, observed(m, replicas=5, ready=5), S, "24GiB")
    assert [(a.verb, a.replicas) for a in d.actions] == [("scale", 2)]
