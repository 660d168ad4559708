"""The Kubernetes API emulator behaves like kube-apiserver for what the operator and kubectl use.

Driven through the real `kubernetes` client and plain HTTP. kubectl and kopf against it:
test_k8s_emulator_tools.py.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import kubernetes
import pytest

from tests.k8s import selectors, validation
from tests.unit.k8s_testdata import MODEL_CRD, configmap, job, model

MODELS = ("modelyard.io", "v1alpha1", "models")


@pytest.fixture(scope="module")
def k8s_crds():
    return [MODEL_CRD]


@pytest.fixture
def api(kubeconfig):
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    yield client
    client.close()


def http(k8s, method: str, path: str, body=None, ctype: str = "application/json"):
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(k8s.url + path, data=data, method=method, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def watch_events(k8s, path: str) -> list[dict]:
    """A whole watch stream (the path carries timeoutSeconds, so the server ends it)."""
    with urllib.request.urlopen(k8s.url + path, timeout=15) as resp:
        return [json.loads(line) for line in resp.read().splitlines() if line.strip()]


def test_create_sets_server_metadata_and_answers_201(api, namespace):
    core = kubernetes.client.CoreV1Api(api)
    body = {"metadata": {"generateName": "cfg-"}, "data": {"a": "1"}}
    obj, status, _ = core.create_namespaced_config_map_with_http_info(namespace, body)
    assert status == 201
    assert obj.metadata.name.startswith("cfg-") and len(obj.metadata.name) == 9
    assert obj.metadata.uid and obj.metadata.creation_timestamp is not None
    assert obj.metadata.resource_version.isdigit()
    with pytest.raises(kubernetes.client.ApiException) as err:
        core.create_namespaced_config_map(namespace, {"metadata": {"name": obj.metadata.name}})
    assert err.value.status == 409 and json.loads(err.value.body)["reason"] == "AlreadyExists"


def test_resource_version_is_a_global_counter_bumped_on_every_write(k8s, namespace):
    a = k8s.create(configmap("a", namespace))
    b = k8s.create(configmap("b", namespace))
    a2 = k8s.patch("ConfigMap", namespace, "a", {"metadata": {"labels": {"x": "1"}}})
    rvs = [int(o["metadata"]["resourceVersion"]) for o in (a, b, a2)]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3


def test_generation_moves_only_on_spec_changes(k8s, namespace):
    m = k8s.create(model("m", namespace))
    assert m["metadata"]["generation"] == 1
    m = k8s.patch("Model", namespace, "m", {"metadata": {"labels": {"team": "a"}}})
    assert m["metadata"]["generation"] == 1
    m = k8s.patch_status("Model", namespace, "m", {"phase": "Downloading"})
    assert m["metadata"]["generation"] == 1 and m["status"]["phase"] == "Downloading"
    m = k8s.patch("Model", namespace, "m", {"spec": {"gpus": 2}, "status": {"phase": "Ready"}})
    assert m["metadata"]["generation"] == 2
    assert m["status"]["phase"] == "Downloading", "the main resource must ignore .status"


def test_stale_resource_version_conflicts(api, namespace):
    core = kubernetes.client.CoreV1Api(api)
    old = core.create_namespaced_config_map(namespace, {"metadata": {"name": "c"}, "data": {"a": "1"}})
    core.patch_namespaced_config_map("c", namespace, {"data": {"a": "2"}})
    old.data = {"a": "3"}
    with pytest.raises(kubernetes.client.ApiException) as err:
        core.replace_namespaced_config_map("c", namespace, old)
    assert err.value.status == 409 and json.loads(err.value.body)["reason"] == "Conflict"
    stale = {"metadata": {"resourceVersion": old.metadata.resource_version}, "data": {"a": "4"}}
    with pytest.raises(kubernetes.client.ApiException) as err:
        core.patch_namespaced_config_map("c", namespace, stale)
    assert err.value.status == 409
    assert core.read_namespaced_config_map("c", namespace).data == {"a": "2"}


def test_json_patch_test_op_failure_is_422(k8s, namespace):
    k8s.create(configmap("c", namespace))
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
           {"op": "add", "path": "/metadata/finalizers", "value": ["x"]}]
    code, body = http(k8s, "PATCH", f"/api/v1/namespaces/{namespace}/configmaps/c", ops,
                      "application/json-patch+json")
    assert code == 422 and body["kind"] == "Status"
    assert "finalizers" not in k8s.get("ConfigMap", namespace, "c")["metadata"]


@pytest.mark.parametrize("method,path", [
    ("GET", "/api/v1/namespaces/{ns}/configmaps/missing"),
    ("DELETE", "/api/v1/namespaces/{ns}/configmaps/missing"),
    ("PATCH", "/apis/batch/v1/namespaces/{ns}/jobs/missing"),
    ("PUT", "/apis/modelyard.io/v1alpha1/namespaces/{ns}/models/missing"),
    ("GET", "/apis/apps/v1/namespaces/{ns}/deployments/missing/status"),
    ("GET", "/api/v1/namespaces/{ns}/pods/missing/log"),
    ("GET", "/apis/nothing.io/v1/things"),
    ("GET", "/api/v1/namespaces/no-such-namespace"),
])
def test_missing_things_are_404_status_objects(k8s, namespace, method, path):
    body = {"metadata": {"name": "missing"}} if method in ("PUT", "PATCH") else None
    code, status = http(k8s, method, path.format(ns=namespace), body,
                        "application/merge-patch+json" if method == "PATCH" else "application/json")
    assert code == 404
    assert (status["kind"], status["reason"], status["code"], status["status"]) == ("Status", "NotFound", 404, "Failure")


def test_create_in_missing_namespace_is_404(k8s):
    code, status = http(k8s, "POST", "/api/v1/namespaces/nope/configmaps", configmap("x", "nope"))
    assert code == 404 and status["message"] == 'namespaces "nope" not found'


def test_watch_from_list_resource_version_misses_nothing(k8s, namespace):
    k8s.create(configmap("before", namespace))
    _, listing = http(k8s, "GET", f"/api/v1/namespaces/{namespace}/configmaps")
    rv = listing["metadata"]["resourceVersion"]
    k8s.create(configmap("after", namespace))
    k8s.delete("ConfigMap", namespace, "before")
    events = watch_events(k8s, f"/api/v1/namespaces/{namespace}/configmaps?watch=true"
                               f"&resourceVersion={rv}&timeoutSeconds=1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "after"), ("DELETED", "before")]


def test_watch_without_resource_version_starts_with_current_objects(k8s, namespace):
    k8s.create(configmap("one", namespace))
    events = watch_events(k8s, f"/api/v1/namespaces/{namespace}/configmaps?watch=true&timeoutSeconds=1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "one")]


def test_watch_list_protocol_ends_initial_events_with_a_bookmark(k8s, namespace):
    k8s.create(configmap("one", namespace))
    events = watch_events(k8s, f"/api/v1/namespaces/{namespace}/configmaps?watch=true&timeoutSeconds=1"
                               "&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan")
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_watch_from_compacted_history_is_410_gone(k8s, namespace):
    k8s.emu.call(lambda: setattr(k8s.store, "compacted_rv", k8s.store.rv))
    try:
        events = watch_events(k8s, f"/api/v1/namespaces/{namespace}/configmaps?watch=true&resourceVersion=1")
    finally:
        k8s.emu.call(lambda: setattr(k8s.store, "compacted_rv", 0))
    assert events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410


def test_watch_selectors_and_objects_leaving_them(k8s, namespace):
    k8s.create(configmap("a", namespace, {"app": "x", "tier": "web"}))
    k8s.create(configmap("b", namespace, {"app": "y"}))
    _, listing = http(k8s, "GET", "/api/v1/configmaps")
    rv = listing["metadata"]["resourceVersion"]
    k8s.patch("ConfigMap", namespace, "a", {"metadata": {"labels": {"app": "z"}}})
    k8s.create(configmap("c", namespace, {"app": "x"}))
    base = f"/api/v1/namespaces/{namespace}/configmaps?watch=true&timeoutSeconds=1"
    seen = watch_events(k8s, base + f"&resourceVersion={rv}&labelSelector=app%3Dx")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in seen] == [("DELETED", "a"), ("ADDED", "c")]
    seen = watch_events(k8s, base + "&fieldSelector=metadata.name%3Db")
    assert [e["object"]["metadata"]["name"] for e in seen] == ["b"]
    seen = watch_events(k8s, f"/api/v1/configmaps?watch=true&timeoutSeconds=1&fieldSelector=metadata.namespace%3D{namespace}"
                              "&labelSelector=app%20in%20(x,y)")
    assert sorted(e["object"]["metadata"]["name"] for e in seen) == ["b", "c"]


@pytest.mark.parametrize("selector,expected", [
    ("app=x", ["a"]), ("app==x", ["a"]), ("app!=x", ["b", "c"]), ("app in (x,y)", ["a", "b"]),
    ("app notin (x)", ["b", "c"]), ("tier", ["a"]), ("!tier", ["b", "c"]), ("app=x,tier=web", ["a"]),
])
def test_label_selector_grammar(selector, expected):
    objs = {"a": {"app": "x", "tier": "web"}, "b": {"app": "y"}, "c": {}}
    pred = selectors.label_selector(selector)
    assert [n for n, labels in objs.items() if pred({"metadata": {"labels": labels}})] == expected


def test_list_with_selectors_has_a_list_resource_version(api, namespace, k8s):
    k8s.create(job("dl", namespace, {"app.kubernetes.io/component": "download"}))
    k8s.create(job("cv", namespace, {"app.kubernetes.io/component": "convert"}))
    batch = kubernetes.client.BatchV1Api(api)
    jobs = batch.list_namespaced_job(namespace, label_selector="app.kubernetes.io/component=download")
    assert [j.metadata.name for j in jobs.items] == ["dl"]
    assert int(jobs.metadata.resource_version) >= int(jobs.items[0].metadata.resource_version)
    jobs = batch.list_job_for_all_namespaces(field_selector=f"metadata.namespace={namespace},metadata.name=cv")
    assert [j.metadata.name for j in jobs.items] == ["cv"]


def test_put_patches_and_delete_collection(api, namespace, k8s):
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespaced_config_map(namespace, configmap("c", namespace, {"keep": "no"}))
    cur = core.read_namespaced_config_map("c", namespace)
    cur.data = {"replaced": "yes"}
    assert core.replace_namespaced_config_map("c", namespace, cur).data == {"replaced": "yes"}
    assert core.patch_namespaced_config_map("c", namespace, {"data": {"more": "1"}}).data == \
        {"replaced": "yes", "more": "1"}
    k8s.create({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": namespace},
                "spec": {"selector": {"matchLabels": {"app": "d"}}, "template": {
                    "metadata": {"labels": {"app": "d"}},
                    "spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}}}})
    apps = kubernetes.client.AppsV1Api(api)
    smp = {"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "z"}]}}}}
    dep = apps.patch_namespaced_deployment("d", namespace, smp)  # the client sends strategic merge
    assert [(c.name, c.image) for c in dep.spec.template.spec.containers] == [("a", "x"), ("b", "z")]
    core.create_namespaced_config_map(namespace, configmap("other", namespace, {"keep": "yes"}))
    core.delete_collection_namespaced_config_map(namespace, label_selector="keep=no")
    assert [c.metadata.name for c in core.list_namespaced_config_map(namespace).items] == ["other"]


def test_server_side_apply_creates_then_merges(k8s, namespace):
    path = f"/apis/modelyard.io/v1alpha1/namespaces/{namespace}/models/applied?fieldManager=test"
    doc = "apiVersion: modelyard.io/v1alpha1\nkind: Model\nmetadata:\n  name: applied\nspec:\n  source:\n    uri: hf://a/b\n"
    code, created = http(k8s, "PATCH", path, doc.encode(), "application/apply-patch+yaml")
    assert code == 201 and created["spec"]["source"]["uri"] == "hf://a/b"
    code, applied = http(k8s, "PATCH", path, (doc + "  gpus: 2\n").encode(), "application/apply-patch+yaml")
    assert code == 200 and applied["spec"]["gpus"] == 2 and applied["metadata"]["generation"] == 2


@pytest.mark.parametrize("kind,obj", [
    ("Job", job("j", "NS")),
    ("Deployment", {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "j", "namespace": "NS"},
                    "spec": {"replicas": 1}}),
])
def test_status_subresource_changes_only_status(k8s, namespace, kind, obj):
    obj["metadata"]["namespace"] = namespace
    created = k8s.create({**obj, "status": {"ignored": True}})
    assert "status" not in created
    path = f"/apis/{created['apiVersion']}/namespaces/{namespace}/{kind.lower()}s/j/status"
    code, after = http(k8s, "PATCH", path, {"status": {"succeeded": 1}, "spec": {"replicas": 9},
                                            "metadata": {"labels": {"no": "pe"}}}, "application/merge-patch+json")
    assert code == 200 and after["status"] == {"succeeded": 1}
    assert after["spec"] == created["spec"] and "labels" not in after["metadata"] or after["metadata"]["labels"] == {}
    assert int(after["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    assert after["metadata"]["generation"] == created["metadata"]["generation"]


def test_finalizers_hold_deletion_until_removed(api, k8s, namespace):
    k8s.create(configmap("f", namespace, finalizers=["example.com/hold", "example.com/other"]))
    k8s.delete("ConfigMap", namespace, "f")
    held = k8s.get("ConfigMap", namespace, "f")
    assert held is not None and held["metadata"]["deletionTimestamp"]
    core = kubernetes.client.CoreV1Api(api)  # strategic merge patches, as the client sends them
    core.patch_namespaced_config_map("f", namespace, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["example.com/other"]}})
    assert k8s.get("ConfigMap", namespace, "f")["metadata"]["finalizers"] == ["example.com/hold"]
    core.patch_namespaced_config_map("f", namespace, {"metadata": {"finalizers": []}})
    assert k8s.get("ConfigMap", namespace, "f") is None


def test_owner_references_cascade_in_the_background(k8s, namespace):
    owner = k8s.create(model("owner", namespace))
    ref = lambda o: [{"apiVersion": o["apiVersion"], "kind": o["kind"], "name": o["metadata"]["name"],  # noqa: E731
                      "uid": o["metadata"]["uid"], "controller": True}]
    child = k8s.create({**job("owner-download", namespace), "metadata": {
        "name": "owner-download", "namespace": namespace, "ownerReferences": ref(owner)}})
    k8s.create(configmap("grandchild", namespace, ownerReferences=ref(child)))
    k8s.create(configmap("unrelated", namespace))
    k8s.delete("Model", namespace, "owner")
    k8s.wait_gone("Job", namespace, "owner-download")
    k8s.wait_gone("ConfigMap", namespace, "grandchild")
    assert k8s.get("ConfigMap", namespace, "unrelated") is not None


def test_discovery_for_core_and_groups(api):
    assert kubernetes.client.CoreApi(api).get_api_versions().versions == ["v1"]
    core = kubernetes.client.CoreV1Api(api).get_api_resources()
    assert core.group_version == "v1"
    by_name = {r.name: r for r in core.resources}
    assert by_name["namespaces"].namespaced is False and by_name["pods"].kind == "Pod"
    assert {"pods/log", "pods/status", "persistentvolumeclaims", "secrets", "events", "services"} <= set(by_name)
    groups = {g.name: g for g in kubernetes.client.ApisApi(api).get_api_versions().groups}
    for group in ("batch", "apps", "modelyard.io", "coordination.k8s.io", "events.k8s.io", "apiextensions.k8s.io"):
        assert group in groups
    assert groups["modelyard.io"].preferred_version.group_version == "modelyard.io/v1alpha1"
    models = {r.name: r for r in kubernetes.client.CustomObjectsApi(api).get_api_resources(
        "modelyard.io", "v1alpha1").resources}
    assert models["models"].kind == "Model" and models["models"].namespaced
    assert "watch" in models["models"].verbs and "models/status" in models


def test_created_crd_appears_in_discovery_and_serves(k8s, namespace):
    crd = json.loads(json.dumps(MODEL_CRD).replace("modelyard.io", "gadgets.test").replace("models", "gadgets")
                     .replace("Model", "Gadget"))
    k8s.create(crd)
    code, rl = http(k8s, "GET", "/apis/gadgets.test/v1alpha1")
    assert code == 200 and rl["resources"][0]["kind"] == "Gadget"
    code, _ = http(k8s, "POST", f"/apis/gadgets.test/v1alpha1/namespaces/{namespace}/gadgets",
                   {**model("g", namespace), "apiVersion": "gadgets.test/v1alpha1", "kind": "Gadget"})
    assert code == 201


def test_deleting_a_crd_removes_its_kind_and_objects(k8s, namespace):
    crd = json.loads(json.dumps(MODEL_CRD).replace("modelyard.io", "doomed.test"))
    k8s.create(crd)
    k8s.create({**model("x", namespace), "apiVersion": "doomed.test/v1alpha1"})
    k8s.delete("CustomResourceDefinition", None, "models.doomed.test")
    code, _ = http(k8s, "GET", f"/apis/doomed.test/v1alpha1/namespaces/{namespace}/models/x")
    assert code == 404
    assert "doomed.test" not in {g["name"] for g in http(k8s, "GET", "/apis")[1]["groups"]}


def test_model_defaults_are_applied(k8s, namespace):
    m = k8s.create(model("d", namespace))
    assert m["spec"]["precision"] == "auto" and m["spec"]["gpus"] == 1
    assert m["spec"]["source"]["revision"] == "main"


@pytest.mark.parametrize("spec,field,message", [
    ({"precision": "int3"}, "spec.precision",
     'Unsupported value: "int3": supported values: "auto", "float32", "float16", "bfloat16", "fp8", "int8", "int4"'),
    ({"gpus": -1}, "spec.gpus", "Invalid value: -1: spec.gpus in body should be greater than or equal to 0"),
    ({"gpus": "two"}, "spec.gpus", 'Invalid value: "two": spec.gpus in body must be of type integer'),
    ({"source": {"uri": "ftp://x"}}, "spec.source.uri", "should match"),
    ({"source": {}}, "spec.source.uri", "Required value"),
    ({"colour": "red"}, "spec.colour", "field not declared in schema"),
    ({"gpus": 0, "precision": "fp8"}, "spec.precision", "fp8 needs a GPU"),
    ({"adapters": [{"name": "a", "uri": "x"}, {"name": "a", "uri": "y"}]}, "spec.adapters", "adapter names must be unique"),
    ({"tags": ["b", "a"]}, "spec.tags", "tags must be sorted"),
])
def test_invalid_models_are_422_naming_the_field(api, namespace, spec, field, message):
    body = model("bad", namespace, **spec)
    with pytest.raises(kubernetes.client.ApiException) as err:
        kubernetes.client.CustomObjectsApi(api).create_namespaced_custom_object(*MODELS[:2], namespace, "models", body)
    status = json.loads(err.value.body)
    assert err.value.status == 422 and status["reason"] == "Invalid"
    assert f"{field}: " in status["message"] and message in status["message"]
    assert any(c["field"] == field and message in c["message"] for c in status["details"]["causes"])


def test_unknown_fields_are_pruned_when_the_client_asks_to_ignore_them(k8s, namespace):
    body = model("pruned", namespace, colour="red")
    code, created = http(k8s, "POST", f"/apis/modelyard.io/v1alpha1/namespaces/{namespace}/models"
                                      "?fieldValidation=Ignore", body)
    assert code == 201 and "colour" not in created["spec"] and created["metadata"]["name"] == "pruned"


def test_validate_against_crd_is_reusable():
    ok = validation.validate_against_crd(MODEL_CRD, model("x", "ns"))
    assert ok == []
    errs = validation.validate_against_crd(MODEL_CRD, model("x", "ns", precision="int3", gpus=99))
    assert [f for f, _ in errs] == ["spec.gpus", "spec.precision"]


def test_pod_log_returns_the_text_set_by_the_test(api, k8s, namespace):
    k8s.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": namespace},
                "spec": {"containers": [{"name": "c", "image": "x"}]}})
    k8s.set_pod_log(namespace, "p", "downloaded 3 files\n")
    assert kubernetes.client.CoreV1Api(api).read_namespaced_pod_log("p", namespace) == "downloaded 3 files\n"


def test_deleting_a_namespace_deletes_its_contents(k8s):
    k8s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "doomed"}})
    k8s.create(configmap("c", "doomed"))
    k8s.delete("Namespace", None, "doomed")
    k8s.wait_gone("Namespace", None, "doomed")
    assert k8s.list("ConfigMap", "doomed") == []
