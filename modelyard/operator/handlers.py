"""kopf handlers: they only decide *when* to reconcile; reconcile.py decides *what*."""
from __future__ import annotations

import asyncio
import logging
import os
import time

import kopf

from modelyard.api import GROUP, PLURAL, VERSION
from modelyard.operator import peering
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
async def start_resync(memo: kopf.Memo, settings: kopf.OperatorSettings, **_) -> None:
    """One loop for all Models instead of a kopf timer per Model (no finalizer on every Model, no
    task per Model): Models that wait on something without events (pod logs, retries) are looked
    at when due, and every Model, Ready ones included, every MODELYARD_RESYNC_SECONDS (default 60)
    so that a lost event never leaves a child missing. It stands by while kopf peering pauses us.
    """
    memo.resync = asyncio.create_task(_resync_loop(settings.peering))


@kopf.on.cleanup()
async def stop_resync(memo: kopf.Memo, **_) -> None:
    task = getattr(memo, "resync", None)
    if task:
        task.cancel()


class _Peering:
    """Whether kopf peering pauses this operator (read at most every MODELYARD_PEERING_CHECK_SECONDS, 5)."""

    def __init__(self, settings) -> None:
        self.settings, self.checked, self.paused = settings, 0.0, False

    def is_paused(self) -> bool:
        if self.settings.standalone or not self.settings.name:
            return False
        clock = time.monotonic()
        if clock - self.checked >= float(os.environ.get("MODELYARD_PEERING_CHECK_SECONDS", "5")):
            self.checked = clock
            kube = reconciler().kube
            try:
                if self.settings.clusterwide:
                    bodies = [kube.get_cluster_peering(self.settings.name)]
                else:
                    bodies = [kube.get("KopfPeering", ns, self.settings.name) for ns in _namespaces()]
                priority = int(self.settings.priority or 0)
                self.paused = any(peering.paused((b or {}).get("status"), priority) for b in bodies)
            except Exception:  # cannot tell: stand by, as kopf does when its peering watch breaks
                logging.getLogger("modelyard.operator").exception("cannot read the peering object")
                self.paused = True
        return self.paused


def _namespaces() -> list[str]:
    """The watched namespaces (set by `modelyard operator --namespace`); kopf peers in each."""
    return [n for n in os.environ.get("MODELYARD_WATCH_NAMESPACES", "").split(",") if n] or \
        [os.environ.get("POD_NAMESPACE") or "default"]


async def _resync_loop(peering_settings) -> None:
    loop = asyncio.get_running_loop()
    every = float(os.environ.get("MODELYARD_RESYNC_SECONDS", "60"))
    pause, last_full = _Peering(peering_settings), time.monotonic()
    while True:
        await asyncio.sleep(1)
        if await loop.run_in_executor(None, pause.is_paused):
            continue
        keys = reconciler().due()
        if time.monotonic() - last_full >= every:
            last_full = time.monotonic()
            keys = sorted(set(keys) | set(CACHE.keys("Model")))
        for namespace, name in keys:
            try:
                await loop.run_in_executor(None, reconciler().reconcile, namespace, name)
            except Exception:  # logged; the Model stays due and is retried on the next tick
                logging.getLogger("modelyard.operator").exception("resync of %s/%s failed", namespace, name)


def _owner(body) -> str | None:
    meta = body.get("metadata") or {}
    refs = [r for r in meta.get("ownerReferences") or [] if r.get("kind") == "Model"]
    return refs[0]["name"] if refs else (meta.get("labels") or {}).get(INSTANCE_LABEL)


def _child_event(kind: str, type: str | None, body, namespace: str) -> None:
    """A child changed or went away (also a Ready Model's): look at its Model again."""
    if _remember(kind, type, body) and (owner := _owner(body)):
        reconciler().reconcile(namespace, owner)


@kopf.on.event("batch", "v1", "jobs", labels=CHILD_LABELS)
def job_event(type: str, body, namespace: str, **_) -> None:
    _child_event("Job", type, body, namespace)


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS)
def deployment_event(type: str, body, namespace: str, **_) -> None:
    _child_event("Deployment", type, body, namespace)


@kopf.on.event("", "v1", "services", labels=CHILD_LABELS)
def service_event(type: str, body, namespace: str, **_) -> None:
    _child_event("Service", type, body, namespace)


@kopf.on.event("", "v1", "persistentvolumeclaims", labels=CHILD_LABELS)
def pvc_event(type: str, body, namespace: str, **_) -> None:
    _child_event("PersistentVolumeClaim", type, body, namespace)


@kopf.on.event("", "v1", "configmaps", labels=CHILD_LABELS)
def configmap_event(type: str, body, namespace: str, **_) -> None:
    _child_event("ConfigMap", type, body, namespace)


@kopf.on.event("", "v1", "pods", labels=CHILD_LABELS)
def pod_event(type: str, body, namespace: str, **_) -> None:
    """Pods of our Jobs (termination messages, why they wait) and servers (crashes, adapter probes)."""
    _child_event("Pod", type, body, namespace)
