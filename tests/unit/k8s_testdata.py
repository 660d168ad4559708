"""Inline CRDs and manifests for the emulator's own tests (independent of crds/ in the repo)."""
from __future__ import annotations

PRECISIONS = ["auto", "float32", "float16", "bfloat16", "fp8", "int8", "int4"]

MODEL_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "models.modelyard.io"},
    "spec": {
        "group": "modelyard.io",
        "scope": "Namespaced",
        "names": {"plural": "models", "singular": "model", "kind": "Model", "listKind": "ModelList",
                  "shortNames": ["mdl"]},
        "versions": [{
            "name": "v1alpha1", "served": True, "storage": True,
            "subresources": {"status": {}},
            "additionalPrinterColumns": [
                {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                {"name": "GPUs", "type": "integer", "jsonPath": ".spec.gpus"},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            ],
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object", "required": ["source"],
                        "x-kubernetes-validations": [
                            {"rule": "self.gpus > 0 || self.precision != 'fp8'",
                             "message": "fp8 needs a GPU", "fieldPath": ".precision"},
                        ],
                        "properties": {
                            "source": {"type": "object", "required": ["uri"], "properties": {
                                "uri": {"type": "string", "pattern": "^(hf|s3|https?|pvc|file)://.+"},
                                "revision": {"type": "string", "default": "main"},
                            }},
                            "precision": {"type": "string", "enum": PRECISIONS, "default": "auto"},
                            "gpus": {"type": "integer", "minimum": 0, "maximum": 8, "default": 1},
                            "adapters": {"type": "array", "items": {
                                "type": "object", "required": ["name", "uri"],
                                "properties": {"name": {"type": "string"}, "uri": {"type": "string"}}},
                                "x-kubernetes-validations": [
                                    {"rule": "self.all(a, self.exists_one(b, b.name == a.name))",
                                     "message": "adapter names must be unique"}]},
                            "tags": {"type": "array", "items": {"type": "string"},
                                     "x-kubernetes-validations": [{"rule": "self.isSorted()",
                                                                   "message": "tags must be sorted"}]},
                        },
                    },
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
            }},
        }],
    },
}

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.emulator.test"},
    "spec": {
        "group": "emulator.test", "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                      "schema": {"openAPIV3Schema": {"type": "object",
                                                     "x-kubernetes-preserve-unknown-fields": True}}}],
    },
}


def model(name: str, ns: str, **spec) -> dict:
    body = {"source": {"uri": "hf://org/tiny"}, **spec}
    return {"apiVersion": "modelyard.io/v1alpha1", "kind": "Model",
            "metadata": {"name": name, "namespace": ns}, "spec": body}


def configmap(name: str, ns: str, labels: dict | None = None, **meta) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns, "labels": labels or {}, **meta}, "data": {"k": "v"}}


def job(name: str, ns: str, labels: dict | None = None) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                                           "containers": [{"name": "main", "image": "busybox"}]}}}}
