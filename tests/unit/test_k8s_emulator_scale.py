"""The emulator's deployments/scale subresource and EndpointSlices, through the real kubernetes
client (what the gateway uses)."""
from __future__ import annotations

import kubernetes
import pytest

from tests.unit.k8s_testdata import MODEL_CRD


@pytest.fixture(scope="module")
def k8s_crds():
    return [MODEL_CRD]


@pytest.fixture
def api(kubeconfig):
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    yield client
    client.close()


def deployment(name: str, ns: str, replicas: int) -> dict:
    labels = {"app.kubernetes.io/instance": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}}


def test_scale_subresource_reads_and_writes_replicas_only(api, k8s, namespace):
    k8s.create(deployment("web", namespace, 0))
    apps = kubernetes.client.AppsV1Api(api)
    scale = apps.read_namespaced_deployment_scale("web", namespace)
    assert (scale.spec.replicas, scale.status.selector) == (0, "app.kubernetes.io/instance=web")
    apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": 3}})
    dep = k8s.get("Deployment", namespace, "web")
    assert dep["spec"]["replicas"] == 3 and dep["spec"]["template"]["spec"]["containers"][0]["image"] == "x"
    assert dep["metadata"]["generation"] == 2


def test_scale_rejects_negative_replicas_and_missing_deployments(api, k8s, namespace):
    k8s.create(deployment("web", namespace, 1))
    apps = kubernetes.client.AppsV1Api(api)
    with pytest.raises(kubernetes.client.ApiException) as exc:
        apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": -1}})
    assert exc.value.status == 422 and "spec.replicas" in exc.value.body
    with pytest.raises(kubernetes.client.ApiException) as exc:
        apps.read_namespaced_deployment_scale("absent", namespace)
    assert exc.value.status == 404


def test_endpointslices_list_by_service_label(api, k8s, namespace):
    for svc, ip in (("a", "10.0.0.1"), ("b", "10.0.0.2")):
        k8s.create({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": f"{svc}-x1", "namespace": namespace, "labels": {"kubernetes.io/service-name": svc}},
                    "addressType": "IPv4", "ports": [{"name": "http", "port": 8000}],
                    "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}]})
    disc = kubernetes.client.DiscoveryV1Api(api)
    got = disc.list_namespaced_endpoint_slice(namespace, label_selector="kubernetes.io/service-name=a").items
    assert [s.endpoints[0].addresses for s in got] == [["10.0.0.1"]]
