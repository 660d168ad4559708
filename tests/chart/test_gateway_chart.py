"""The chart's gateway: Deployment + Service running `modelyard gateway`, RBAC that reads and only
writes deployments/scale, optional Ingress/HTTPRoute, and the autoscaler/InferencePool config the
operator reads (with the RBAC each needs)."""
from __future__ import annotations

import yaml

from modelyard.operator.resources import Settings
from tests.chart.helm import CHART, by_kind, one, render

GATEWAY = CHART / "ci" / "gateway-values.yaml"


def _gateway_objects(objs):
    return [o for o in objs if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "gateway"]


def test_gateway_is_off_by_default():
    assert _gateway_objects(render()) == []


def test_gateway_deployment_and_service():
    objs = render([GATEWAY])
    kinds = sorted(o["kind"] for o in _gateway_objects(objs))
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Ingress", "Service", "ServiceAccount",
                     "ServiceMonitor"]
    monitor = next(o for o in _gateway_objects(objs) if o["kind"] == "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True and monitor["spec"]["endpoints"][0]["port"] == "http"
    dep = next(o for o in _gateway_objects(objs) if o["kind"] == "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["modelyard", "gateway"]
    assert c["args"][c["args"].index("--namespace") + 1] == "team-a"
    assert c["args"][c["args"].index("--max-wait") + 1] == "600"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    svc = next(o for o in _gateway_objects(objs) if o["kind"] == "Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    ing = next(o for o in _gateway_objects(objs) if o["kind"] == "Ingress")
    assert ing["spec"]["rules"][0]["host"] == "llm.example.com"
    assert ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == svc["metadata"]["name"]


def test_gateway_rbac_reads_and_writes_only_deployments_scale():
    role = next(o for o in _gateway_objects(render([GATEWAY])) if o["kind"] == "ClusterRole")
    writes = {"create", "update", "patch", "delete", "deletecollection"}
    written = [r for r in role["rules"] if writes & set(r["verbs"])]
    assert [(r["apiGroups"], r["resources"]) for r in written] == [(["apps"], ["deployments/scale"])]
    watched = sorted(r["resources"][0] for r in role["rules"] if r["verbs"] == ["get", "list", "watch"])
    assert watched == ["deployments", "endpointslices", "models"]  # the informers' list + watch
    secrets = [r for r in role["rules"] if "secrets" in r["resources"]]
    assert [r["verbs"] for r in secrets] == [["get"]]
    no_secrets = next(o for o in _gateway_objects(render([GATEWAY], sets=("gateway.readSecrets=false",)))
                      if o["kind"] == "ClusterRole")
    assert not [r for r in no_secrets["rules"] if "secrets" in r["resources"]]


def test_httproute_points_at_the_gateway_service():
    objs = render([GATEWAY], sets=("gateway.httpRoute.enabled=true", "gateway.httpRoute.parentRefs[0].name=public",
                                   "gateway.httpRoute.hostnames[0]=llm.example.com"))
    route = next(o for o in _gateway_objects(objs) if o["kind"] == "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "public"}]
    assert route["spec"]["rules"][0]["backendRefs"][0]["port"] == 80


def test_operator_config_and_rbac_follow_autoscaler_and_inference_pool():
    objs = render([GATEWAY])
    cm = next(o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"].endswith("-config"))
    settings = Settings.from_dict(yaml.safe_load(cm["data"]["config.yaml"]))
    assert settings.autoscaler == "keda" and settings.inference_pool["enabled"] is True
    assert settings.keda["prometheusAddress"].startswith("http://")
    rules = [r for o in objs if o["kind"] in ("ClusterRole", "Role") and o not in _gateway_objects(objs) for r in o["rules"]]
    groups = {g for r in rules for g in r["apiGroups"]}
    assert {"keda.sh", "inference.networking.k8s.io"} <= groups
    default_rules = [r for o in render() if o["kind"] == "ClusterRole" for r in o["rules"]]
    assert not {"keda.sh", "inference.networking.k8s.io"} & {g for r in default_rules for g in r["apiGroups"]}
    assert Settings.from_dict(yaml.safe_load(one(render(), "ConfigMap", cm["metadata"]["name"])["data"]["config.yaml"])).autoscaler == "gateway"


def test_gateway_cli_accepts_the_rendered_command():
    from modelyard.cli import build_parser

    dep = next(o for o in _gateway_objects(render([GATEWAY])) if o["kind"] == "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args([*c["command"][1:], *c["args"]])
    assert (args.command, args.port, args.namespace, args.max_held) == ("gateway", 8080, "team-a", 256)
