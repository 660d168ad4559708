"""kopf handlers: they only decide *when* to reconcile; reconcile.py decides *what*."""
from __future__ import annotations

import asyncio
import logging
import os

import kopf

from modelyard.api import GROUP, PLURAL, VERSION
from modelyard.operator.cache import Cache
from modelyard.operator.config import load_settings
from modelyard.operator.kube import Kube
from modelyard.operator.reconcile import Reconciler
from modelyard.operator.resources.common import INSTANCE_LABEL

CHILD_LABELS = {"app.kubernetes.io/name": "modelyard"}
_reconciler: Reconciler | None = None
CACHE = Cache()


def reconciler() -> Reconciler:
    global _reconciler
    if _reconciler is None:
        _reconciler = Reconciler(Kube(), load_settings(), CACHE)
    return _reconciler


def _remember(kind: str, type: str | None, body) -> bool:
    """Feed the cache; True when the event says something new (not the echo of our own write)."""
    obj = dict(body)
    if type == "DELETED":
        CACHE.forget(kind, obj)
        return True
    return CACHE.put(kind, obj)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    global _reconciler, CACHE
    _reconciler, CACHE = None, Cache()  # a restarted operator re-reads config, kubeconfig and the world
    # Keep kopf's bookkeeping in annotations: status belongs to the Model's schema.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="modelyard.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="modelyard.io")
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = int(os.environ.get("MODELYARD_WORKERS", "16"))
    settings.watching.server_timeout = 300


@kopf.on.event(GROUP, VERSION, PLURAL)
def model_event(type: str, body, name: str, namespace: str, **_) -> None:
    """Every change of a Model (create, update, resume after restart) → one reconcile pass."""
    if _remember("Model", type, body):
        reconciler().reconcile(namespace, name)


@kopf.on.startup()
async def start_resync(memo: kopf.Memo, **_) -> None:
    """Progress and waits that produce no events (pod logs) are polled for Models that wait.

    One loop for all Models instead of a kopf timer per Model: no finalizer on every Model,
    no task per Model, and stable Models cost nothing.
    """
    memo.resync = asyncio.create_task(_resync_loop())


@kopf.on.cleanup()
async def stop_resync(memo: kopf.Memo, **_) -> None:
    task = getattr(memo, "resync", None)
    if task:
        task.cancel()


async def _resync_loop() -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(1)
        for namespace, name in reconciler().due():
            try:
                await loop.run_in_executor(None, reconciler().reconcile, namespace, name)
            except Exception:  # logged; the Model stays due and is retried on the next tick
                logging.getLogger("modelyard.operator").exception("resync of %s/%s failed", namespace, name)


def _owner(body) -> str | None:
    refs = [r for r in body.get("metadata", {}).get("ownerReferences") or [] if r.get("kind") == "Model"]
    return refs[0]["name"] if refs else None


@kopf.on.event("batch", "v1", "jobs", labels=CHILD_LABELS)
def job_event(type: str, body, namespace: str, **_) -> None:
    """A Job finished: look at its Model again."""
    if _remember("Job", type, body) and (owner := _owner(body)) and type != "DELETED":
        reconciler().reconcile(namespace, owner)


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS)
def deployment_event(type: str, body, namespace: str, **_) -> None:
    """A Deployment rolled out (or lost pods): look at its Model again."""
    if _remember("Deployment", type, body) and (owner := _owner(body)) and type != "DELETED":
        reconciler().reconcile(namespace, owner)


@kopf.on.event("", "v1", "services", labels=CHILD_LABELS)
def service_event(type: str, body, **_) -> None:
    _remember("Service", type, body)


@kopf.on.event("", "v1", "persistentvolumeclaims", labels=CHILD_LABELS)
def pvc_event(type: str, body, **_) -> None:
    _remember("PersistentVolumeClaim", type, body)


@kopf.on.event("", "v1", "configmaps", labels=CHILD_LABELS)
def configmap_event(type: str, body, **_) -> None:
    _remember("ConfigMap", type, body)


@kopf.on.event("", "v1", "pods", labels=CHILD_LABELS)
def pod_event(type: str, body, namespace: str, **_) -> None:
    """Pods of our Jobs (termination messages, why they wait) and servers (crashes, adapter probes)."""
    model = ((body.get("metadata") or {}).get("labels") or {}).get(INSTANCE_LABEL)
    if _remember("Pod", type, body) and model:
        reconciler().reconcile(namespace, model)
