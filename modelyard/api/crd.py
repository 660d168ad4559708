"""Generate the Model CustomResourceDefinition from ``modelyard.api.types``.

``python -m modelyard.api.crd --write crds/models.modelyard.io.yaml`` (``make crds``) writes it;
``--check PATH`` exits non-zero when the file on disk differs from what the types generate.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from modelyard.api.schema import model_schema
from modelyard.api.types import GROUP, KIND, PLURAL, SINGULAR, VERSION, ModelSpec

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Engine", "type": "string", "jsonPath": ".status.plan.engine"},
    {"name": "Precision", "type": "string", "jsonPath": ".status.plan.precision"},
    {"name": "GPUs", "type": "integer", "jsonPath": ".spec.gpus"},
    {"name": "Layout", "type": "string", "jsonPath": ".status.layout", "description": "Nodes × GPUs per node, TP × PP"},
    {"name": "VRAM/GPU", "type": "string", "jsonPath": ".status.plan.perGpu", "description": "Planned memory per GPU"},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 0},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

CONDITION = {
    "type": "object",
    "description": "A condition in the Kubernetes style.",
    "required": ["type", "status"],
    "properties": {
        "type": {"type": "string", "description": "Downloaded, Converted, Planned, Ready or Degraded."},
        "status": {"type": "string", "enum": ["True", "False", "Unknown"], "description": "True, False or Unknown."},
        "reason": {"type": "string", "description": "CamelCase reason for the last transition."},
        "message": {"type": "string", "description": "Human-readable details."},
        "observedGeneration": {"type": "integer", "description": "metadata.generation the condition was computed for."},
        "lastTransitionTime": {"type": "string", "format": "date-time", "description": "When status last changed."},
    },
}

STATUS = {
    "type": "object",
    "description": "Observed state, written by the operator.",
    "properties": {
        "phase": {
            "type": "string",
            "enum": ["Pending", "Downloading", "Converting", "Deploying", "Ready", "Failed"],
            "description": "Where the Model is in its pipeline.",
        },
        "observedGeneration": {"type": "integer", "description": "metadata.generation last reconciled."},
        "conditions": {
            "type": "array", "items": CONDITION, "description": "Downloaded, Converted, Planned, Ready, Degraded.",
            "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
        },
        "endpoint": {"type": "string", "description": "OpenAI-compatible base URL, http://<name>.<ns>.svc:<port>/v1."},
        "source": {
            "type": "object",
            "description": "What was downloaded.",
            "properties": {
                "resolvedRevision": {"type": "string", "description": "Commit or content digest the source resolved to."},
                "cacheKey": {"type": "string", "description": "Content key of the download in the cache."},
                "format": {"type": "string", "description": "Format the download step detected."},
            },
        },
        "progress": {
            "type": "object",
            "description": "Progress of the running step.",
            "properties": {
                "step": {"type": "string", "description": "download or convert."},
                "bytesDone": {"type": "integer", "description": "Bytes transferred so far."},
                "bytesTotal": {"type": "integer", "description": "Bytes to transfer."},
                "percent": {"type": "integer", "description": "bytesDone / bytesTotal, in percent."},
                "etaSeconds": {"type": "integer", "description": "Estimated seconds left."},
            },
        },
        "plan": {
            "type": "object",
            "description": "The planner's answer: engine, precision, tensor parallel size, memory per GPU, fit.",
            "x-kubernetes-preserve-unknown-fields": True,
        },
        "convert": {
            "type": "object",
            "description": "The conversion recipe and where its output lives.",
            "x-kubernetes-preserve-unknown-fields": True,
        },
        "retry": {
            "type": "object",
            "description": "Bounded retry of a failed step (annotate modelyard.io/retry=<new value> to retry at once).",
            "properties": {
                "step": {"type": "string", "description": "download or convert."},
                "failures": {"type": "integer", "description": "Failed runs of the step at this generation."},
                "maxAttempts": {"type": "integer", "description": "Runs before the operator gives up."},
                "nextRetryAt": {"type": "string", "nullable": True, "description": "When the next run starts (none: no retry by itself)."},
                "generation": {"type": "integer", "description": "metadata.generation the failures belong to."},
                "jobUid": {"type": "string", "description": "uid of the Job whose failure was counted last."},
                "handled": {"type": "string", "nullable": True, "description": "The last modelyard.io/retry value acted on."},
            },
        },
        "layout": {"type": "string", "description": "How one replica is spread: nodes × GPUs per node, tensor parallel × pipeline parallel (e.g. 2 × 8 GPUs, TP 8 × PP 2)."},
        "nodes": {"type": "integer", "description": "Nodes (pods of a LeaderWorkerSet group) per replica."},
        "replicas": {"type": "integer", "description": "Serving replicas that exist."},
        "readyReplicas": {"type": "integer", "description": "Serving replicas that are ready."},
        "adapters": {
            "type": "array",
            "description": "Adapters and in how many pods each is loaded.",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "description": "Adapter name."},
                    "loadedPods": {"type": "integer", "description": "Pods that serve it."},
                },
            },
        },
    },
}


def build_crd() -> dict:
    spec = model_schema(ModelSpec)
    root = {
        "type": "object",
        "description": "A model to deploy: weights, format, precision, engine, GPUs, adapters.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "modelyard.io/v1alpha1"},
            "kind": {"type": "string", "description": "Model"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": STATUS,
        },
        "x-kubernetes-validations": [
            {
                "rule": "size(self.metadata.name) <= 52 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
                "message": "metadata.name must be a DNS-1035 label of at most 52 characters (it names the Deployment, Service and <name>-download Job)",
            }
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "plural": PLURAL, "singular": SINGULAR, "listKind": f"{KIND}List", "shortNames": ["mdl"], "categories": ["modelyard"]},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def render() -> str:
    header = "# Generated by `make crds` from modelyard/api/types.py. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--write", metavar="PATH", action="append", default=[], help="write the CRD here")
    ap.add_argument("--check", metavar="PATH", action="append", default=[], help="fail if PATH differs")
    args = ap.parse_args(argv)
    text = render()
    for path in args.write:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    stale = [p for p in args.check if not Path(p).exists() or Path(p).read_text() != text]
    for p in stale:
        print(f"{p} is out of date: run `make crds`", file=sys.stderr)
    if not args.write and not args.check:
        sys.stdout.write(text)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
