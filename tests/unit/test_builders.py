"""Pure builders: each test reads like the manifest it expects."""
from __future__ import annotations

import copy
import json

from modelyard.api import parse_model
from modelyard.operator.resources import (
    SPEC_HASH,
    Settings,
    build_adapters_configmap,
    build_cache_pvc,
    build_convert_job,
    build_deployment,
    build_download_job,
    build_service,
    convert_recipe,
    converted_dir,
    endpoint,
)
from modelyard.operator.resources.download import base_dir, source_dir

DOC = {
    "apiVersion": "modelyard.io/v1alpha1",
    "kind": "Model",
    "metadata": {"name": "llama", "namespace": "ml", "uid": "uid-1", "generation": 1},
    "spec": {
        "source": {"uri": "hf://meta-llama/Llama-3.1-8B", "revision": "main", "secretRef": {"name": "hf-token"}},
        "precision": "bfloat16",
        "gpus": 2,
        "gpuMemory": "80GiB",
        "adapters": [{"name": "sql", "uri": "hf://someone/sql-lora"}],
        "serving": {"maxModelLen": 8192},
    },
}
SETTINGS = Settings()
PLAN = {"engine": "vllm", "precision": "bfloat16", "tensorParallelSize": 2, "maxModelLen": 8192, "perGpuBytes": 40 * 2**30, "fits": True}


def model(**spec):
    doc = copy.deepcopy(DOC)
    doc["spec"].update(spec)
    return parse_model(doc)


def test_cache_pvc():
    pvc = build_cache_pvc(model(), SETTINGS)
    assert pvc["metadata"]["name"] == "llama-cache"
    assert pvc["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "50Gi"}}}
    assert build_cache_pvc(model(cache={"claimName": "shared-models"}), SETTINGS) is None


def test_download_job():
    job = build_download_job(model(), SETTINGS, "80GiB")
    meta = job["metadata"]
    assert meta["name"] == "llama-download" and meta["namespace"] == "ml"
    assert meta["labels"] == {
        "app.kubernetes.io/name": "modelyard",
        "app.kubernetes.io/instance": "llama",
        "app.kubernetes.io/component": "download",
        "app.kubernetes.io/managed-by": "modelyard-operator",
    }
    assert meta["ownerReferences"] == [{"apiVersion": "modelyard.io/v1alpha1", "kind": "Model", "name": "llama",
                                        "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}]
    assert SPEC_HASH in meta["annotations"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    (main,) = pod["containers"]
    assert main["command"] == ["modelyard"]
    assert main["args"] == [
        "download", "--source", "hf://meta-llama/Llama-3.1-8B", "--dest", base_dir(model()), "--revision", "main",
        "--termination-log", "/dev/termination-log",
        "--plan-precision", "bfloat16", "--plan-engine", "auto", "--plan-gpus", "2", "--plan-gpu-memory", "80GiB",
        "--plan-max-model-len", "8192",
    ]
    # Credentials only through envFrom of the Secret: never in args.
    assert main["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    assert main["securityContext"]["runAsNonRoot"] is True and main["securityContext"]["readOnlyRootFilesystem"] is True
    (adapter,) = pod["initContainers"]
    assert adapter["name"] == "adapter-sql" and "--no-plan" in adapter["args"]
    rule = job["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [3]


def test_download_hash_ignores_replicas_but_not_precision():
    base = build_download_job(model(), SETTINGS)["metadata"]["annotations"][SPEC_HASH]
    assert build_download_job(model(replicas=3), SETTINGS)["metadata"]["annotations"][SPEC_HASH] == base
    assert build_download_job(model(precision="int4"), SETTINGS)["metadata"]["annotations"][SPEC_HASH] != base


def test_same_source_same_cache_folder():
    assert base_dir(model()) == base_dir(model(precision="int8", gpus=4))
    assert base_dir(model()) != base_dir(model(source={"uri": "hf://meta-llama/Llama-3.1-8B", "revision": "v2"}))


def test_convert_only_when_needed():
    assert convert_recipe(model(), PLAN, "safetensors") is None
    assert convert_recipe(model(), PLAN, None) is None
    assert convert_recipe(model(format="pytorch"), PLAN, None) == {"format": "pytorch", "precision": "auto", "engine": "vllm", "mergeAdapters": []}
    assert convert_recipe(model(), {**PLAN, "precision": "int4"}, "safetensors")["precision"] == "int4"
    # accelerate quantizes with bitsandbytes at load time: no step
    assert convert_recipe(model(), {**PLAN, "engine": "accelerate", "precision": "int8"}, "safetensors") is None
    assert convert_recipe(model(format="auto"), PLAN, "gguf")["format"] == "gguf"
    merged = model(adapters=[{"name": "sql", "uri": "hf://a/b", "merge": True}])
    assert convert_recipe(merged, PLAN, "safetensors")["mergeAdapters"] == ["sql"]


def test_convert_job():
    recipe = {"format": "pytorch", "precision": "int4", "engine": "vllm", "mergeAdapters": []}
    out = converted_dir(model(), recipe, "abc123")
    job = build_convert_job(model(), SETTINGS, recipe, out)
    assert job["metadata"]["name"] == "llama-convert"
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "convert"
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["convert", "--input", base_dir(model()), "--output", out, "--format", "pytorch",
                         "--precision", "int4", "--engine", "vllm", "--termination-log", "/dev/termination-log"]
    assert "envFrom" not in c  # the convert step gets no credentials (and no network: chart NetworkPolicy)
    assert out.startswith("/cache/converted/") and out == converted_dir(model(replicas=5), recipe, "abc123")


def test_deployment():
    dep = build_deployment(model(), SETTINGS, PLAN, "/cache/sources/x")
    assert dep["metadata"]["name"] == "llama"
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/instance": "llama", "app.kubernetes.io/component": "server"}
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == SETTINGS.images["serveVllm"]
    assert c["args"] == ["serve", "--engine", "vllm", "--model", "/cache/sources/x", "--port", "8000",
                         "--served-model-name", "llama", "--gpus", "2", "--precision", "bfloat16",
                         "--max-model-len", "8192", "--planned-gpu-bytes", str(40 * 2**30),
                         "--adapters-file", "/etc/modelyard/adapters/adapters.json"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert c["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert {"name": "adapters", "configMap": {"name": "llama-adapters"}} in pod["volumes"]
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "llama-cache", "readOnly": True}
    assert pod["automountServiceAccountToken"] is False
    assert dep["spec"]["template"]["metadata"]["annotations"][SPEC_HASH] == dep["metadata"]["annotations"][SPEC_HASH]


def test_deployment_hash_rolls_on_precision_not_replicas():
    h = lambda m, p=PLAN: build_deployment(m, SETTINGS, p, "/cache/x")["metadata"]["annotations"][SPEC_HASH]  # noqa: E731
    assert h(model(replicas=4)) == h(model())
    assert h(model(), {**PLAN, "precision": "int8"}) != h(model())


def test_accelerate_deployment_passes_max_memory_and_extra_args():
    plan = {"engine": "accelerate", "precision": "float32", "maxMemory": {"cpu": "8GiB"}, "offload": True}
    dep = build_deployment(model(gpus=0, gpuMemory=None, serving={"args": ["--foo"]}), SETTINGS, plan, "/cache/x")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["image"] == SETTINGS.images["serveAccelerate"]
    assert c["args"][c["args"].index("--max-memory") + 1] == '{"cpu":"8GiB"}'
    assert "--offload-folder" in c["args"] and c["args"][-2:] == ["--", "--foo"]
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})


def test_service_and_endpoint():
    svc = build_service(model())
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == {"app.kubernetes.io/instance": "llama", "app.kubernetes.io/component": "server"}
    assert endpoint(model()) == "http://llama.ml.svc:8000/v1"


def test_adapters_configmap_changes_without_rolling_the_deployment():
    cm = build_adapters_configmap(model())
    assert cm["metadata"]["name"] == "llama-adapters"
    assert json.loads(cm["data"]["adapters.json"]) == {"sql": source_dir("hf://someone/sql-lora")}
    two = model(adapters=[{"name": "sql", "uri": "hf://someone/sql-lora"}, {"name": "chat", "uri": "hf://someone/chat-lora"}])
    assert build_adapters_configmap(two)["metadata"]["annotations"] != cm["metadata"]["annotations"]
    h = lambda m: build_deployment(m, SETTINGS, PLAN, "/cache/x")["metadata"]["annotations"][SPEC_HASH]  # noqa: E731
    assert h(two) == h(model())
    merged = model(adapters=[{"name": "sql", "uri": "hf://someone/sql-lora", "merge": True}])
    assert build_adapters_configmap(merged) is None
    assert "--adapters-file" not in build_deployment(merged, SETTINGS, PLAN, "/cache/x")["spec"]["template"]["spec"]["containers"][0]["args"]


def test_download_job_reads_a_uri_from_a_secret_never_from_its_args():
    m = model(source={"uriFrom": {"secretKeyRef": {"name": "presigned", "key": "url"}}},
              adapters=[{"name": "sql", "uriFrom": {"secretKeyRef": {"name": "presigned", "key": "adapter"}}}])
    pod = build_download_job(m, SETTINGS)["spec"]["template"]["spec"]
    for container, key in [(pod["containers"][0], "url"), (pod["initContainers"][0], "adapter")]:
        assert container["args"][:3] == ["download", "--source-env", "MODELYARD_SOURCE_URI"]
        assert {"name": "MODELYARD_SOURCE_URI", "valueFrom": {"secretKeyRef": {"name": "presigned", "key": key}}} in container["env"]
    # the cache key names the Secret's key: two Models reading the same Secret key share the bytes
    assert pod["containers"][0]["args"][4] == source_dir("secret:presigned/url")


def test_pvc_sources_are_mounted_read_only_into_the_download_pod():
    m = model(source={"uri": "pvc://models/llama/v1"}, adapters=[{"name": "sql", "uri": "pvc://adapters/sql"},
                                                                  {"name": "chat", "uri": "pvc://models/chat"}])
    pod = build_download_job(m, SETTINGS)["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"]: v for v in pod["volumes"] if v["name"].startswith("source-")}
    assert set(claims) == {"models", "adapters"} and all(v["persistentVolumeClaim"]["readOnly"] for v in claims.values())
    for container in pod["containers"] + pod["initContainers"]:
        mounts = {mt["mountPath"]: mt for mt in container["volumeMounts"]}
        assert mounts["/mnt/pvc/models"]["readOnly"] and mounts["/mnt/pvc/adapters"]["readOnly"]
    assert "/mnt/pvc/models/llama/v1" not in json.dumps(pod["volumes"])  # the claim is mounted, the path is read inside


def test_file_uris_are_refused_in_a_cluster_for_adapters_too():
    from modelyard.operator.decide import decide
    from modelyard.operator.observe import Observed

    d = decide(model(adapters=[{"name": "sql", "uri": "file:///home/me/sql"}]), None, Observed(), SETTINGS)
    degraded = next(c for c in d.status["conditions"] if c["type"] == "Degraded")
    assert d.status["phase"] == "Failed" and degraded["reason"] == "InvalidSource"
    assert "spec.adapters[0].uri" in degraded["message"] and "pvc://" in degraded["message"]
    assert d.actions == []
