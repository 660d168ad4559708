"""What `helm template` renders is valid Kubernetes for the oldest and newest supported versions,
custom resources match their CRDs, and the objects say what the chart promises."""
from __future__ import annotations

import json
import shutil
import textwrap

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.chart.helm import (CHART, NAMESPACE, RELEASE, ROOT, VALUE_SETS, by_kind, crd_schema, one,
                              render, run, schema, tool)

# kubeVersion in Chart.yaml is ">=1.28.0-0"; kubernetes-validate 1.37.0 knows 1.25-1.37.
KUBE_VERSIONS = ["1.28.0", "1.37.0"]
CUSTOM = {"monitoring.coreos.com/v1", "kopf.dev/v1", "modelyard.io/v1alpha1"}
IDS = [i for i, _ in VALUE_SETS]
ALL = dict(VALUE_SETS)


def _builtin(objs):
    return [o for o in objs if o["apiVersion"] not in CUSTOM]


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", [v for _, v in VALUE_SETS], ids=IDS)
def test_builtin_objects_validate_strictly(values, version):
    objs = _builtin(render(values))
    assert objs
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for {version} at {path}: {exc.message}")


def test_chart_declares_the_tested_kube_versions():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == ">=1.28.0-0"


@pytest.mark.parametrize("values", [v for _, v in VALUE_SETS], ids=IDS)
def test_custom_resources_match_their_crd_schemas(values):
    schemas = {
        "PodMonitor": schema("podmonitor"), "ServiceMonitor": schema("servicemonitor"),
        "PrometheusRule": schema("prometheusrule"),
        "ClusterKopfPeering": crd_schema(CHART / "crds" / "kopf-peerings.yaml", "ClusterKopfPeering"),
        "KopfPeering": crd_schema(CHART / "crds" / "kopf-peerings.yaml", "KopfPeering"),
    }
    custom = [o for o in render(values) if o["apiVersion"] in CUSTOM]
    for obj in custom:
        assert obj["kind"] in schemas, f"no schema to check {obj['kind']}"
        jsonschema.validate(obj, schemas[obj["kind"]])


def test_all_integrations_render_every_monitoring_object():
    objs = render(ALL["all-integrations"])
    kinds = {o["kind"] for o in objs}
    assert {"PodMonitor", "ServiceMonitor", "PrometheusRule", "NetworkPolicy"} <= kinds
    assert not {"PodMonitor", "ServiceMonitor", "PrometheusRule", "NetworkPolicy"} & {o["kind"] for o in render([])}


def test_example_models_match_the_crd():
    model_schema = crd_schema(CHART / "crds" / "models.modelyard.io.yaml", "Model")
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    models = [d for p in examples for d in yaml.safe_load_all(p.read_text()) if d and d.get("kind") == "Model"]
    assert models, "examples/ has no Model"
    for model in models:
        jsonschema.validate(model, model_schema)


def test_chart_crd_is_identical_to_crds_dir():
    chart_copy = (CHART / "crds" / "models.modelyard.io.yaml").read_text()
    assert chart_copy == (ROOT / "crds" / "models.modelyard.io.yaml").read_text(), \
        "charts/modelyard/crds/ is stale: run `make crds`"


def _rules(objs):
    """The operator's RBAC rules (the gateway's are checked in test_gateway_chart.py)."""
    return [r for o in objs if o["kind"] in ("ClusterRole", "Role")
            and (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component") != "gateway" for r in o["rules"]]


@pytest.mark.parametrize("values", [v for _, v in VALUE_SETS], ids=IDS)
def test_rbac_has_no_wildcards_and_no_secrets(values):
    for rule in _rules(render(values)):
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], f"wildcard in {key}: {rule}"
        assert "secrets" not in rule["resources"], "the operator never reads Secrets"


def _grants(rules):
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_clusterwide_rbac_grants_what_the_operator_does():
    grants = _grants(_rules(render([])))
    expected = {("modelyard.io", "models/status", "patch"), ("batch", "jobs", "create"),
                ("apps", "deployments", "update"), ("", "persistentvolumeclaims", "delete"),
                ("", "services", "create"), ("", "pods/log", "get"), ("", "events", "create"),
                ("events.k8s.io", "events", "create"), ("kopf.dev", "clusterkopfpeerings", "patch"),
                ("apiextensions.k8s.io", "customresourcedefinitions", "watch")}
    assert expected <= grants
    assert ("", "pods", "delete") not in grants and ("batch", "jobs", "update") not in grants


def test_namespaced_watch_uses_roles_and_a_minimal_clusterrole():
    objs = render(ALL["namespaced"])
    roles = by_kind(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in by_kind(objs, "RoleBinding")) == ["team-a", "team-b"]
    cluster = _grants(one(objs, "ClusterRole")["rules"])
    assert cluster == {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("get", "list", "watch")}
    assert ("kopf.dev", "kopfpeerings", "patch") in _grants(roles[0]["rules"])
    args = one(objs, "Deployment", "-modelyard")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert " ".join(args).count("--namespace") == 2 and "team-a" in args and "team-b" in args
    peerings = by_kind(objs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert not by_kind(objs, "ClusterKopfPeering")
    pm = one(objs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_operator_deployment_runs_modelyard_operator_safely():
    dep = one(render([]), "Deployment", "-modelyard")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["modelyard", "operator"]
    assert c["args"][:4] == ["--metrics-port", "8080", "--liveness", "http://0.0.0.0:8081/healthz"]
    assert c["args"][-4:] == ["--peering", f"{RELEASE}-modelyard", "--priority", "auto"]
    assert "--namespace" not in c["args"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 8080, "health": 8081}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert {"name": "MODELYARD_CONFIG", "value": "/etc/modelyard/config.yaml"} in c["env"]
    assert {"name": "config", "mountPath": "/etc/modelyard", "readOnly": True} in c["volumeMounts"]
    assert dep["spec"]["strategy"] == {"type": "Recreate"}


def test_two_replicas_share_one_peering():
    objs = render(ALL["two-replicas"])
    dep = one(objs, "Deployment", "-modelyard")
    assert dep["spec"]["replicas"] == 2
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--peering") + 1] == "modelyard-ha"
    assert args[-1] == "--verbose"
    assert one(objs, "ClusterKopfPeering")["metadata"]["name"] == "modelyard-ha"


def _settings(tmp_path, *sets):
    """The rendered config.yaml as the operator reads it (modelyard.operator.config.load_settings)."""
    from modelyard.operator.config import load_settings
    cm = one(render([], sets), "ConfigMap", "-config")
    assert cm["metadata"]["name"] == f"{RELEASE}-config"
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    return load_settings(str(path))


def test_operator_reads_images_profiles_and_cache_from_the_config_map(tmp_path):
    settings = _settings(tmp_path)
    assert settings.images == {
        "download": "ghcr.io/modelyard/download:0.1.0",
        "convert": "ghcr.io/modelyard/convert:0.1.0",
        "serveVllm": "ghcr.io/modelyard/serve-vllm:0.1.0",
        "serveAccelerate": "ghcr.io/modelyard/serve-accelerate:0.1.0",
        "serveOnnxruntime": "ghcr.io/modelyard/serve-onnxruntime:0.1.0",
    }
    # No StorageClass configured: the key is absent, so PVCs get the cluster default
    # (storageClassName "" would disable dynamic provisioning).
    assert settings.default_storage_class is None
    assert settings.image_pull_policy == "IfNotPresent"
    a100 = settings.profiles["nvidia-a100-80gb"]
    assert a100["gpuResource"] == "nvidia.com/gpu" and a100["memory"] == "80GiB"
    assert a100["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert {"nvidia-h100-80gb", "nvidia-l4-24gb", "nvidia-t4-16gb"} <= set(settings.profiles)


def test_config_values_reach_the_operator(tmp_path):
    settings = _settings(tmp_path, "config.cache.defaultStorageClass=fast-nvme", "config.images.convert.tag=9.9.9",
                         "config.imagePullPolicy=Always")
    assert settings.default_storage_class == "fast-nvme"
    assert settings.images["convert"] == "ghcr.io/modelyard/convert:9.9.9"
    assert settings.image_pull_policy == "Always"


def test_config_change_rolls_the_operator():
    def checksum(*sets):
        return one(render([], sets), "Deployment", "-modelyard")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert checksum() != checksum("config.images.convert.tag=9.9.9")


def test_dashboard_configmap_ships_the_dashboard_json():
    cm = one(render(ALL["all-integrations"]), "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(cm["data"]["modelyard.json"])
    assert shipped == json.loads((CHART / "dashboards" / "modelyard.json").read_text())
    names = [v["name"] for v in shipped["templating"]["list"]]
    assert {"model", "namespace"} <= set(names)
    model_var = next(v for v in shipped["templating"]["list"] if v["name"] == "model")
    assert "label_values(modelyard_engine_info" in model_var["definition"]


def test_monitors_scrape_the_right_ports():
    objs = render(ALL["all-integrations"])
    pm = one(objs, "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "modelyard",
                                                     "app.kubernetes.io/component": "server"}
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    assert pm["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    sm = one(objs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "metrics" and sm["spec"]["endpoints"][0]["honorLabels"] is True
    svc = one(objs, "Service", "-metrics")
    assert svc["spec"]["selector"] == one(objs, "Deployment", "-modelyard")["spec"]["selector"]["matchLabels"]


def test_convert_pods_get_no_egress_and_servers_only_http():
    objs = render(ALL["all-integrations"])
    convert = one(objs, "NetworkPolicy", "-convert")
    assert convert["metadata"]["namespace"] == NAMESPACE
    assert convert["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "convert"
    assert "Egress" in convert["spec"]["policyTypes"] and convert["spec"]["egress"] == []
    server = one(objs, "NetworkPolicy", "-server")
    assert server["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "server"
    (rule,) = server["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert rule["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "gateway"}


def test_alerts_carry_thresholds_from_values():
    objs = render(ALL["all-integrations"], ("monitoring.prometheusRule.thresholds.p95LatencySeconds=3",))
    rules = {r["alert"]: r for g in one(objs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]}
    assert set(rules) == {"ModelyardModelNotReady", "ModelyardDownloadStalled", "ModelyardReconcileErrors",
                          "ModelyardGpuMemoryHigh", "ModelyardHighLatency", "ModelyardServingPodRestarting"}
    assert rules["ModelyardHighLatency"]["expr"].rstrip().endswith("> 3")
    assert rules["ModelyardModelNotReady"]["for"] == "30m"
    assert all(r["labels"]["team"] == "ml-platform" for r in rules.values())


def _notes(tmp_path, values) -> str:
    """NOTES.txt as `helm install` prints it (install needs a cluster, so render it via a template)."""
    chart = tmp_path / "modelyard"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n"
        '  notes: {{ include (print $.Template.BasePath "/NOTES.txt") . | toJson }}\n')
    cmd = [tool("helm"), "template", RELEASE, str(chart), "-n", NAMESPACE, "--show-only", "templates/zz-notes.yaml"]
    for v in values:
        cmd += ["-f", str(v)]
    proc = run(*cmd)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)["data"]["notes"]


def test_notes_tell_the_user_what_to_do_next(tmp_path):
    notes = _notes(tmp_path, ALL["all-integrations"])
    assert "kubectl get models" in notes
    assert f"kubectl -n {NAMESPACE} rollout status deployment/{RELEASE}-modelyard" in notes
    assert f"ConfigMap {NAMESPACE}/{RELEASE}-modelyard-dashboard" in notes
    # The Model it tells the user to apply is valid.
    sample = notes.split("<<YAML", 1)[1].split("\n", 1)[1].split("     YAML", 1)[0]
    model = yaml.safe_load(textwrap.dedent(sample))
    jsonschema.validate(model, crd_schema(CHART / "crds" / "models.modelyard.io.yaml", "Model"))


def test_notes_for_a_namespaced_install_apply_into_a_watched_namespace(tmp_path):
    notes = _notes(tmp_path, ALL["namespaced"])
    assert "watches namespaces: team-a, team-b" in notes
    assert "kubectl apply -n team-a -f -" in notes


@pytest.mark.parametrize("values", [v for _, v in VALUE_SETS], ids=IDS)
def test_operator_cli_accepts_the_rendered_command(values):
    from modelyard.cli import build_parser
    c = one(render(values), "Deployment", "-modelyard")["spec"]["template"]["spec"]["containers"][0]
    assert c["command"][0] == "modelyard"
    args = build_parser().parse_args([*c["command"][1:], *c["args"]])
    assert args.command == "operator" and args.metrics_port == 8080
    assert args.liveness == "http://0.0.0.0:8081/healthz"
    watched = yaml.safe_load(values[0].read_text()).get("watchNamespaces", []) if values else []
    assert args.namespace == watched


def test_kube_version_below_the_supported_range_is_refused():
    proc = run(tool("helm"), "template", RELEASE, str(CHART), "--kube-version", "1.27.0")
    assert proc.returncode != 0 and "kubeVersion" in proc.stderr
    assert run(tool("helm"), "template", RELEASE, str(CHART), "--kube-version", "1.28.0").returncode == 0


@pytest.mark.parametrize("values", [v for _, v in VALUE_SETS], ids=IDS)
def test_rbac_lets_children_block_their_models_deletion(values):
    """Every child's ownerReference sets blockOwnerDeletion; with OwnerReferencesPermissionEnforcement
    (OpenShift) creating such a child needs `update` on models/finalizers, in every install mode."""
    from modelyard.api import parse_model
    from modelyard.operator.resources import Settings, build_cache_pvc, build_download_job

    m = parse_model({"apiVersion": "modelyard.io/v1alpha1", "kind": "Model", "metadata": {"name": "m", "uid": "u"},
                     "spec": {"source": {"uri": "hf://o/r"}}})
    for child in (build_download_job(m, Settings()), build_cache_pvc(m, Settings())):
        assert child["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is True
    objs = render(values)
    operator_roles = [o for o in objs if o["kind"] in ("ClusterRole", "Role")
                      and (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component") != "gateway"]
    for role in [o for o in operator_roles if any("models" in r["resources"] for r in o["rules"])]:
        assert ("modelyard.io", "models/finalizers", "update") in _grants(role["rules"]), role["metadata"]["name"]


def test_retry_and_deadline_values_reach_the_operators_settings():
    import yaml

    from modelyard.operator.resources import Settings

    cm = one(render([], sets=("config.retry.maxAttempts=2", "config.deadlines.downloadFloorMiBps=50")), "ConfigMap", "-config")
    settings = Settings.from_dict(yaml.safe_load(cm["data"]["config.yaml"]))
    assert settings.retry_max_attempts == 2 and settings.retry_base_seconds == 30
    assert settings.download_floor_mib_s == 50 and settings.deadline_default_seconds == 86400
