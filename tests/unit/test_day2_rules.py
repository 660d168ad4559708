"""Pure day-2 rules: the peering pause, drift of edited children, pod wait reasons, ownership."""
from __future__ import annotations

import datetime as dt

from modelyard.operator import observe as ob
from modelyard.operator.peering import paused

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


def peer(priority, seconds_ago=5, lifetime=60):
    return {"priority": priority, "lastseen": (NOW - dt.timedelta(seconds=seconds_ago)).isoformat(), "lifetime": lifetime}


def test_resync_stands_by_like_kopf_peering():
    assert not paused({"me": peer(10)}, 10, NOW)                          # alone
    assert paused({"me": peer(10), "other": peer(20)}, 10, NOW)           # outranked
    assert not paused({"me": peer(20), "other": peer(10)}, 20, NOW)       # we outrank
    assert paused({"me": peer(10), "twin": peer(10)}, 10, NOW)            # same priority: kopf pauses both
    assert not paused({"me": peer(10), "dead": peer(20, seconds_ago=120)}, 10, NOW)  # a dead peer does not count
    assert not paused(None, 0, NOW)


def test_drift_sees_edits_of_what_modelyard_sets_not_server_defaults():
    desired = {"kind": "Deployment", "spec": {"selector": {"matchLabels": {"a": "1"}},
                                              "template": {"spec": {"containers": [{"name": "s", "image": "i:1"}]}}}}
    served = {"spec": {"selector": {"matchLabels": {"a": "1"}}, "template": {"spec": {
        "containers": [{"name": "s", "image": "i:1", "terminationMessagePolicy": "File"}], "dnsPolicy": "ClusterFirst"}}}}
    assert not ob.drifted(desired, served)
    served["spec"]["template"]["spec"]["containers"][0]["image"] = "evil"
    assert ob.drifted(desired, served)
    svc = {"kind": "Service", "spec": {"selector": {"x": "1"}, "ports": [{"port": 80}]}}
    assert ob.drifted(svc, {"spec": {"selector": {"x": "1", "y": "2"}, "ports": [{"port": 80, "protocol": "TCP"}]}})


def test_pod_wait_reasons():
    pending = {"metadata": {"name": "p"}, "status": {"phase": "Pending", "containerStatuses": [
        {"name": "c", "state": {"waiting": {"reason": "ContainerCreating"}}}]}}
    assert ob.pod_wait([pending]) is None  # starting normally is not a problem
    pending["status"]["containerStatuses"][0]["state"]["waiting"] = {"reason": "ErrImagePull", "message": "not found"}
    assert ob.pod_wait([pending]) == {"reason": "ErrImagePull", "message": "ErrImagePull: not found (pod p, container c)"}


def test_foreign_children_name_their_controller():
    obs = ob.Observed(deployment={"metadata": {"name": "m", "ownerReferences": [
        {"kind": "Model", "name": "other", "uid": "u2", "controller": True}]}},
        service={"metadata": {"name": "m", "ownerReferences": [{"kind": "Model", "name": "m", "uid": "u1", "controller": True}]}})
    assert ob.foreign_children(obs, "u1") == {"deployment": "Deployment m (controlled by Model other)"}


def test_retry_backoff_is_bounded_and_the_annotation_retries_at_once():
    from modelyard.operator.retry import Policy, on_failure

    policy = Policy(max_attempts=3, base_seconds=30, max_seconds=45)
    v1 = on_failure(None, "download", 1, "j1", "ConnectionDropped", None, policy, NOW)
    assert (v1.delete_job, v1.wait, v1.status["failures"]) == (False, 30, 1) and v1.status["nextRetryAt"] == "2026-01-01T12:00:30Z"
    later = NOW + dt.timedelta(seconds=31)
    assert on_failure(v1.status, "download", 1, "j1", "ConnectionDropped", None, policy, later).delete_job
    v2 = on_failure(v1.status, "download", 1, "j2", "ConnectionDropped", None, policy, later)
    assert v2.wait == 45 and v2.status["failures"] == 2  # 60 s capped at 45
    v3 = on_failure(v2.status, "download", 1, "j3", "ConnectionDropped", None, policy, later)
    assert v3.final and not v3.delete_job and "gave up after 3 attempts" in v3.message
    v4 = on_failure(v3.status, "download", 1, "j3", "ConnectionDropped", "again", policy, later)
    assert v4.delete_job and v4.status["failures"] == 0 and v4.status["handled"] == "again"
    assert not on_failure(v4.status, "download", 1, "j4", "ConnectionDropped", "again", policy, later).delete_job  # handled once


def test_step_jobs_have_a_deadline_from_the_weights():
    from modelyard.api import parse_model
    from modelyard.operator.resources import Settings, build_download_job

    m = parse_model({"apiVersion": "modelyard.io/v1alpha1", "kind": "Model", "metadata": {"name": "m"},
                     "spec": {"source": {"uri": "hf://o/r"}}})
    s = Settings()
    assert build_download_job(m, s)["spec"]["activeDeadlineSeconds"] == 86400
    # 10 GiB at the 10 MiB/s floor = 1024 s, plus the 900 s allowance
    assert build_download_job(m, s, weight_bytes=10 * 2**30)["spec"]["activeDeadlineSeconds"] == 1924


def test_a_stored_model_with_a_credential_uri_starts_nothing():
    """CEL rules ratchet: a Model stored before they existed is refused by the operator itself."""
    from modelyard.api import parse_model
    from modelyard.operator.decide import decide
    from modelyard.operator.resources import Settings

    m = parse_model({"apiVersion": "modelyard.io/v1alpha1", "kind": "Model", "metadata": {"name": "m", "uid": "u"},
                     "spec": {"source": {"uri": "https://TOKEN@host/m.tar"}}}, rules=False)
    d = decide(m, None, ob.Observed(), Settings())
    degraded = next(c for c in d.status["conditions"] if c["type"] == "Degraded")
    assert d.actions == [] and d.status["phase"] == "Failed" and "spec.source.uri" in degraded["message"]
    assert "TOKEN" not in str(d.status) and "TOKEN" not in str(d.events)
