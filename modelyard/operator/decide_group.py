"""The serving step for a replica larger than one node: a LeaderWorkerSet instead of a Deployment.

Pure, like ``decide``: (Model, observed children, plan) → actions and status. Without the
LeaderWorkerSet CRD in the cluster the Model is ``Degraded`` with reason
``LeaderWorkerSetMissing`` and how to install it; nothing else is created for serving.
"""
from __future__ import annotations

from modelyard.api import Model
from modelyard.operator import observe as ob
from modelyard.operator.decide import Action, Decision, _adapters, _ensure, _fail
from modelyard.operator.resources import Settings, build_adapters_configmap, endpoint
from modelyard.operator.resources.leaderworkerset import (
    INSTALL_HINT,
    build_leader_service,
    build_leaderworkerset,
    group_layout,
    group_ready,
    layout_text,
)
from modelyard.operator.status import StatusBuilder

LWS_RECHECK_S = 30.0


def deploy_group(model: Model, obs: ob.Observed, settings: Settings, sb: StatusBuilder, d: Decision,
                 plan: dict, model_dir: str) -> str:
    nodes, per_node = group_layout(model, plan, settings)
    sb.set("nodes", nodes)
    sb.set("layout", layout_text(nodes, per_node, plan))
    if obs.lws_installed is False:
        d.retry_after = LWS_RECHECK_S  # installing the CRD is enough: no need to touch the Model
        return _fail(sb, "Ready", "LeaderWorkerSetMissing",
                     f"spec asks for {nodes} nodes per replica, which needs a LeaderWorkerSet, but the "
                     f"cluster has no leaderworkersets.leaderworkerset.x-k8s.io CRD: {INSTALL_HINT}")
    if obs.deployment:  # it was a one-node Model before
        d.actions.append(Action("delete", obs.deployment))
    desired = build_leaderworkerset(model, settings, plan, model_dir)
    _ensure(d, build_leader_service(model), obs.service)
    adapters_cm = build_adapters_configmap(model)
    if adapters_cm:
        _ensure(d, adapters_cm, obs.adapters_configmap)
    elif obs.adapters_configmap:
        d.actions.append(Action("delete", obs.adapters_configmap))
    if _ensure(d, desired, obs.lws):
        current = (obs.lws.get("spec") or {}).get("replicas")
        if current != model.spec.replicas:
            d.actions.append(Action("scale", desired, replicas=model.spec.replicas))
    changing = any(a.obj["kind"] == "LeaderWorkerSet" for a in d.actions)
    ready, rolled = group_ready(obs.lws, model.spec.replicas)
    rolled = rolled and not changing
    sb.set("endpoint", endpoint(model))
    sb.set("replicas", model.spec.replicas)
    sb.set("readyReplicas", ready)
    if model.spec.replicas == 0:
        sb.condition("Ready", False, "ScaledToZero", "spec.replicas is 0")
        return "Deploying"
    failure = None if rolled else ob.server_failure(obs.server_pods)
    if failure:
        return _fail(sb, "Ready", failure["reason"], failure["message"])
    where = f"{ready}/{model.spec.replicas} groups of {nodes} nodes ({sb.status['layout']})"
    if rolled:
        d.retry_after = LWS_RECHECK_S  # no watch on LeaderWorkerSets (the CRD may come and go): look now and then
        sb.condition("Ready", True, "Ready", f"{where} serving at {endpoint(model)}{_adapters(model, obs, sb, d, ready)}")
        return "Ready"
    sb.condition("Ready", False, "Deploying", f"{where} ready; waiting for every node of the group to load its stage")
    return "Deploying"
