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
