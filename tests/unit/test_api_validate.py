"""`modelyard validate` and the Model API: a corpus of invalid specs, each rejected with its field named."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modelyard.api import ValidationError, load_model, parse_model
from modelyard.cli import main

ROOT = Path(__file__).resolve().parents[2]

VALID = {
    "apiVersion": "modelyard.io/v1alpha1",
    "kind": "Model",
    "metadata": {"name": "llama-8b"},
    "spec": {"source": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct"}},
}


def with_spec(**changes):
    doc = copy.deepcopy(VALID)
    doc["spec"].update(changes)
    return doc


def with_source(**changes):
    return with_spec(source={"uri": "hf://org/repo", **changes})


# (id, document, field path that must be named, a word the message must contain)
INVALID = [
    ("no-spec", {k: v for k, v in VALID.items() if k != "spec"}, "spec", "required"),
    ("no-source", with_spec(source=None), "spec.source", ""),
    ("no-uri", with_spec(source={"revision": "main"}), "spec.source", "exactly one of uri and uriFrom"),
    ("uri-and-uri-from", with_source(uriFrom={"secretKeyRef": {"name": "s", "key": "url"}}), "spec.source", "exactly one"),
    ("uri-userinfo", with_source(uri="https://user:s3cr3t@host/m.tar"), "spec.source.uri", "secretRef"),
    ("uri-token-userinfo", with_source(uri="https://s3cr3t@host/m.tar"), "spec.source.uri", "secretRef"),
    ("uri-hf-userinfo", with_source(uri="hf://tok@org/repo"), "spec.source.uri", "secretRef"),
    ("uri-presigned", with_source(uri="https://b.s3.amazonaws.com/m.tar?X-Amz-Signature=abc"), "spec.source.uri", "uriFrom.secretKeyRef"),
    ("uri-from-no-key", with_spec(source={"uriFrom": {"secretKeyRef": {"name": "s"}}}), "spec.source.uriFrom.secretKeyRef.key", "required"),
    ("uri-from-bad-key", with_spec(source={"uriFrom": {"secretKeyRef": {"name": "s", "key": "a b"}}}), "spec.source.uriFrom.secretKeyRef.key", ""),
    ("adapter-userinfo", with_spec(adapters=[{"name": "sql", "uri": "https://u:p@h/a.tar"}]), "spec.adapters[0].uri", "secretRef"),
    ("adapter-presigned", with_spec(adapters=[{"name": "sql", "uri": "https://h/a.tar?sig=1"}]), "spec.adapters[0].uri", "uriFrom"),
    ("bad-scheme", with_source(uri="ftp://host/x"), "spec.source.uri", "hf://"),
    ("hf-no-repo", with_source(uri="hf://just-org"), "spec.source.uri", "hf://org/repo"),
    ("s3-bad-bucket", with_source(uri="s3://A_B/x"), "spec.source.uri", "s3://"),
    ("revision-non-hf", with_spec(source={"uri": "s3://bucket/prefix", "revision": "main"}), "spec.source", "revision"),
    ("revision-bad-chars", with_source(revision="main branch"), "spec.source.revision", ""),
    ("secret-bad-name", with_source(secretRef={"name": "Hf_Token"}), "spec.source.secretRef.name", "DNS-1123"),
    ("secret-unknown-field", with_source(secretRef={"name": "hf", "key": "x"}), "spec.source.secretRef.key", "unknown field"),
    ("source-typo", with_source(revison="main"), "spec.source.revison", "valid fields here"),
    ("include-not-list", with_source(include="*.safetensors"), "spec.source.include", ""),
    ("format", with_spec(format="h5"), "spec.format", "safetensors"),
    ("precision", with_spec(precision="int3"), "spec.precision", "int4"),
    ("engine", with_spec(engine="tgi"), "spec.engine", "vllm"),
    ("gpus-negative", with_spec(gpus=-1), "spec.gpus", "greater than or equal"),
    ("gpus-too-many", with_spec(gpus=65), "spec.gpus", "less than or equal"),
    ("gpus-string", with_spec(gpus="two"), "spec.gpus", ""),
    ("gpu-memory", with_spec(gpus=1, gpuMemory="80XB!"), "spec.gpuMemory", "80GiB"),
    ("gpu-memory-cpu", with_spec(gpus=0, gpuMemory="80GiB"), "spec", "gpuMemory"),
    ("gpu-resource", with_spec(gpuResource="nvidia.com/gpu/extra"), "spec.gpuResource", "nvidia.com/gpu"),
    ("replicas", with_spec(replicas=-2), "spec.replicas", "greater than or equal"),
    ("adapter-name", with_spec(adapters=[{"name": "SQL", "uri": "hf://a/b"}]), "spec.adapters[0].name", "DNS-1123"),
    ("adapter-no-uri", with_spec(adapters=[{"name": "sql"}]), "spec.adapters[0]", "exactly one of uri and uriFrom"),
    ("adapter-bad-uri", with_spec(adapters=[{"name": "sql", "uri": "gs://x/y"}]), "spec.adapters[0].uri", "hf://"),
    ("adapter-dup", with_spec(adapters=[{"name": "sql", "uri": "hf://a/b"}, {"name": "sql", "uri": "hf://a/c"}]), "spec", "unique"),
    ("onnx-int8", with_spec(format="onnx", precision="int8"), "spec", "onnx"),
    ("fp8-accelerate", with_spec(engine="accelerate", precision="fp8"), "spec", "fp8"),
    ("int4-accelerate-cpu", with_spec(engine="accelerate", precision="int4", gpus=0), "spec", "gpus >= 1"),
    ("max-model-len", with_spec(serving={"maxModelLen": 4}), "spec.serving.maxModelLen", "greater than or equal"),
    ("port-low", with_spec(serving={"port": 80}), "spec.serving.port", "greater than or equal"),
    ("port-high", with_spec(serving={"port": 70000}), "spec.serving.port", "less than or equal"),
    ("args-not-strings", with_spec(serving={"args": [{"a": 1}]}), "spec.serving.args[0]", ""),
    ("env-bad-name", with_spec(serving={"env": [{"name": "1BAD", "value": "x"}]}), "spec.serving.env[0].name", "environment variable"),
    ("toleration-operator", with_spec(tolerations=[{"key": "gpu", "operator": "Maybe"}]), "spec.tolerations[0].operator", "Exists"),
    ("toleration-effect", with_spec(tolerations=[{"key": "gpu", "effect": "Never"}]), "spec.tolerations[0].effect", "NoSchedule"),
    ("cache-size", with_spec(cache={"size": "lots"}), "spec.cache.size", "50Gi"),
    ("cache-access", with_spec(cache={"accessMode": "ReadWriteSometimes"}), "spec.cache.accessMode", "ReadWriteMany"),
    ("node-selector-value", with_spec(nodeSelector={"gpu": 1}), "spec.nodeSelector.gpu", ""),
    ("planner-enforce", with_spec(planner={"enforce": "sometimes"}), "spec.planner.enforce", ""),
    ("spec-typo", with_spec(precison="int8"), "spec.precison", "valid fields here"),
    ("resources-quantity", with_spec(resources={"requests": {"memory": "lots"}}), "spec.resources.requests.memory", "quantity"),
    ("resources-unknown", with_spec(resources={"request": {"cpu": "1"}}), "spec.resources.request", "valid fields here"),
    ("toleration-seconds", with_spec(tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": -5}]),
     "spec.tolerations[0].tolerationSeconds", "greater than or equal"),
    ("cache-claim", with_spec(cache={"claimName": "Shared Models"}), "spec.cache.claimName", "DNS-1123"),
    ("cache-storage-class", with_spec(cache={"storageClassName": "Fast_SSD"}), "spec.cache.storageClassName", "DNS-1123"),
    ("adapter-merge", with_spec(adapters=[{"name": "sql", "uri": "hf://a/b", "merge": "later"}]), "spec.adapters[0].merge", ""),
    ("adapter-revision", with_spec(adapters=[{"name": "sql", "uri": "hf://a/b", "revision": "../x y"}]), "spec.adapters[0].revision", ""),
    ("adapter-secret", with_spec(adapters=[{"name": "sql", "uri": "hf://a/b", "secretRef": {"name": "A B"}}]), "spec.adapters[0].secretRef.name", "DNS-1123"),
    ("env-value-type", with_spec(serving={"env": [{"name": "X", "value": {"a": 1}}]}), "spec.serving.env[0].value", ""),
    ("gpus-per-node-zero", with_spec(gpusPerNode=0), "spec.gpusPerNode", "greater than or equal"),
    ("gpus-per-node-string", with_spec(gpusPerNode="eight"), "spec.gpusPerNode", ""),
    ("nodes-zero", with_spec(nodes=0), "spec.nodes", "greater than or equal"),
    ("nodes-too-many", with_spec(nodes=65), "spec.nodes", "less than or equal"),
    ("nodes-uneven", with_spec(gpus=12, nodes=5), "spec", "gpus must be a multiple of nodes"),
    ("nodes-accelerate", with_spec(engine="accelerate", gpus=2, nodes=2), "spec", "nodes > 1 needs engine vllm"),
    ("bad-api-version", {**VALID, "apiVersion": "modelyard.io/v1"}, "apiVersion", "v1alpha1"),
    ("bad-name", {**VALID, "metadata": {"name": "Llama_8B"}}, "metadata.name", "DNS-1035"),
    ("long-name", {**VALID, "metadata": {"name": "a" * 53}}, "metadata.name", ""),
]


@pytest.mark.parametrize("doc,field,word", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_spec_names_the_field(doc, field, word):
    with pytest.raises(ValidationError) as exc:
        parse_model(doc)
    assert field in exc.value.fields, str(exc.value)
    assert word in str(exc.value), str(exc.value)


def test_corpus_is_large_enough():
    assert len(INVALID) >= 30


VALID_DOCS = [
    VALID,
    with_spec(
        source={"uri": "s3://models/llama", "secretRef": {"name": "s3-creds"}, "include": ["*.safetensors", "*.json"]},
        format="pytorch", precision="int4", engine="vllm", gpus=2, gpuMemory="nvidia-a100-80gb",
        adapters=[{"name": "sql", "uri": "hf://a/b"}, {"name": "chat-v2", "uri": "http://host/adapter.tar.gz", "merge": True}],
        replicas=3, serving={"maxModelLen": 8192, "port": 8080, "args": ["--enforce-eager"], "env": [{"name": "X", "value": "1"}]},
        resources={"requests": {"cpu": 4, "memory": "32Gi"}, "limits": {"cpu": "8"}}, nodeSelector={"gpu": "a100"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        cache={"size": "200Gi", "accessMode": "ReadWriteMany", "storageClassName": "fast"},
    ),
    with_spec(source={"uri": "file:///tmp/tiny"}, engine="accelerate", precision="float32"),
    with_spec(source={"uri": "pvc://models/llama/v1"}, format="gguf", precision="bfloat16"),
    with_spec(source={"uri": "https://example.com/model.tar.gz"}, precision="fp8", gpus=1, gpuMemory="24GB"),
    with_spec(gpus=16, gpusPerNode=8, nodes=2, gpuMemory="80GiB"),
    with_spec(source={"uri": "file:///tmp/tiny"}, engine="vllm", gpus=0, nodes=2),
]


@pytest.mark.parametrize("doc", VALID_DOCS)
def test_valid_specs_pass_with_defaults(doc):
    model = parse_model(doc)
    assert model.spec.serving.port in (8000, 8080)
    assert model.spec.cache.size.endswith("Gi")


def test_defaults_match_the_design():
    spec = parse_model(VALID).spec
    assert (spec.format, spec.precision, spec.engine, spec.gpus, spec.replicas) == ("auto", "auto", "auto", 0, 1)
    assert spec.planner.enforce is True and spec.gpu_resource == "nvidia.com/gpu"


def test_cli_exit_codes_and_messages(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(VALID))
    assert main(["validate", "-f", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_spec(precision="int3")))
    assert main(["validate", "-f", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "spec.precision" in err and "int4" in err


def test_malformed_yaml_gives_the_line(tmp_path, capsys):
    bad = tmp_path / "broken.yaml"
    bad.write_text("apiVersion: modelyard.io/v1alpha1\nkind: Model\nspec:\n  source: {uri: [\n")
    assert main(["validate", "-f", str(bad)]) == 1
    assert "line 5" in capsys.readouterr().err


def test_examples_are_valid():
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        load_model(path)


def test_validate_as_a_subprocess(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_spec(gpus=-1)))
    exe = Path(sys.executable).with_name("modelyard")
    proc = subprocess.run([str(exe), "validate", "-f", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 1 and "spec.gpus" in proc.stderr


def test_rules_can_be_left_to_the_api_server():
    dup = with_spec(adapters=[{"name": "a", "uri": "hf://a/b"}, {"name": "a", "uri": "hf://a/c"}])
    with pytest.raises(ValidationError):
        parse_model(dup)
    assert parse_model(dup, rules=False).spec.adapters[0].name == "a"  # structure still checked:
    with pytest.raises(ValidationError):
        parse_model(with_spec(precision="int3"), rules=False)
