"""reconcile(namespace, name): read the Model and its children, decide, apply, write status once."""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict

from modelyard.api import ValidationError, parse_model
from modelyard.operator import metrics
from modelyard.operator.decide import Action, Decision, decide
from modelyard.operator.cache import Cache
from modelyard.operator.kube import Kube
from modelyard.operator.observe import CHILD_FIELDS, Observed, foreign_children, job_state, owned_pods, termination_message
from modelyard.operator.resources import Settings
from modelyard.operator import probe
from modelyard.operator.resources import base_dir, served_adapters
from modelyard.operator.resources.leaderworkerset import is_multinode
from modelyard.operator.resources.common import COMPONENT_LABEL, INSTANCE_LABEL, cache_claim
from modelyard.operator.status import StatusBuilder, changed, now

log = logging.getLogger("modelyard.operator")
JOB_LABEL = "batch.kubernetes.io/job-name"


class Reconciler:
    def __init__(self, kube: Kube, settings: Settings, cache: Cache | None = None):
        self.kube = kube
        self.settings = settings
        # With a cache (fed by the watches in handlers.py) a pass reads no objects from the API.
        self.cache = cache
        self._locks: dict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
        self._due: dict[tuple[str, str], float] = {}

    def due(self) -> list[tuple[str, str]]:
        """Models waiting on a child whose next look is due (see Decision.retry_after)."""
        clock = time.monotonic()
        return [key for key, at in list(self._due.items()) if at <= clock]

    def reconcile(self, namespace: str, name: str) -> float | None:
        retry = None
        try:
            retry = self._reconcile(namespace, name)
        except Exception:
            retry = 2.0  # API trouble (a 500, a conflict, a lost answer): look again soon
            raise
        finally:
            if retry:
                self._due[(namespace, name)] = time.monotonic() + retry
            else:
                self._due.pop((namespace, name), None)
        return retry

    def _reconcile(self, namespace: str, name: str) -> float | None:
        """One level-based pass; returns seconds after which to look again (None: stable)."""
        with self._locks[(namespace, name)], metrics.RECONCILE_SECONDS.time():
            body = self._get("Model", namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                metrics.forget(namespace, name)
                return None
            try:
                model = parse_model(body, rules=False)  # the API server enforced the CRD's CEL rules
            except ValidationError as exc:
                self._invalid(body, exc)
                return None
            for _ in range(3):
                decision = decide(model, body.get("status"), self.observe(model), self.settings, self._gpu_memory(model))
                if not self._execute_all(decision.actions):
                    break  # else the cache was behind (a create met an existing object): look again
            self._report(body, decision)
            metrics.observe_model(namespace, name, decision.status)
            return decision.retry_after

    def _get(self, kind: str, ns: str, name: str) -> dict | None:
        return self.cache.get(kind, ns, name) if self.cache else self.kube.get(kind, ns, name)

    def _list(self, kind: str, ns: str, labels: dict[str, str]) -> list[dict]:
        return self.cache.list(kind, ns, labels) if self.cache else self.kube.list(kind, ns, labels)

    def observe(self, model) -> Observed:
        ns, name = model.namespace, model.name
        obs = Observed(
            pvc=None if model.spec.cache.claim_name else self._get("PersistentVolumeClaim", ns, cache_claim(model)),
            download_job=self._get("Job", ns, f"{name}-download"),
            convert_job=self._get("Job", ns, f"{name}-convert"),
            deployment=self._get("Deployment", ns, name),
            service=self._get("Service", ns, name),
            adapters_configmap=self._get("ConfigMap", ns, f"{name}-adapters") if served_adapters(model) else None,
        )
        if model.spec.cache.claim_name:
            obs.converted_elsewhere = self._converted_on_claim(model)
            obs.downloading_elsewhere = self._downloading_on_claim(model)
        self._observe_group(model, obs)
        if obs.deployment or obs.lws:
            obs.server_pods = self._list("Pod", ns, {INSTANCE_LABEL: name, COMPONENT_LABEL: "server"})
            if served_adapters(model):
                obs.adapter_pods = probe.adapters_loaded(obs.server_pods, model.spec.serving.port)
        self._refresh_foreign(obs, model.metadata.uid)
        obs.download_pods, obs.download_log = self._pods_and_log(ns, obs.download_job, "download")
        obs.convert_pods, obs.convert_log = self._pods_and_log(ns, obs.convert_job, "convert")
        return obs

    def _refresh_foreign(self, obs: Observed, uid: str | None) -> None:
        """Objects with our names that we do not control may carry no label of ours, so no watch
        tells us when they go: read them from the API on every pass while they block us."""
        if not self.cache:
            return
        for attr in foreign_children(obs, uid):
            held = getattr(obs, attr)
            kind, meta = CHILD_FIELDS[attr], held["metadata"]
            fresh = self.kube.get(kind, meta["namespace"], meta["name"])
            if fresh is None:
                self.cache.forget(kind, held)
            else:
                self.cache.put(kind, fresh)
            setattr(obs, attr, fresh)

    def _observe_group(self, model, obs: Observed) -> None:
        """The LeaderWorkerSet of a multi-node Model (read directly: it has no watch, the CRD may be
        missing), or of a Model that was multi-node before (to delete it)."""
        status = (self._get("Model", model.namespace, model.name) or {}).get("status") or {}
        wanted = is_multinode(model, status.get("plan") or {}, self.settings)
        if not wanted and (status.get("nodes") or 1) <= 1:
            return
        obs.lws_installed = self.kube.serves("LeaderWorkerSet")
        if obs.lws_installed:
            obs.lws = self.kube.get("LeaderWorkerSet", model.namespace, model.name)

    def _converted_on_claim(self, model) -> dict[str, str]:
        """Outputs other Models on the same shared claim have converted (their Converted=True)."""
        out = {}
        for other in self._list("Model", model.namespace, {}):
            spec, status = other.get("spec") or {}, other.get("status") or {}
            if other["metadata"]["name"] == model.name or (spec.get("cache") or {}).get("claimName") != model.spec.cache.claim_name:
                continue
            converted = next((c for c in status.get("conditions") or [] if c["type"] == "Converted"), {})
            output = (status.get("convert") or {}).get("output")
            if output and converted.get("status") == "True" and converted.get("reason") in ("Converted", "Reused"):
                out[output] = other["metadata"]["name"]
        return out

    def _downloading_on_claim(self, model) -> dict[str, str]:
        """Source folders that other Models on the same shared claim are downloading right now."""
        out = {}
        for other in self._list("Model", model.namespace, {}):
            spec, status = other.get("spec") or {}, other.get("status") or {}
            if other["metadata"]["name"] == model.name or (spec.get("cache") or {}).get("claimName") != model.spec.cache.claim_name:
                continue
            cond = next((c for c in status.get("conditions") or [] if c["type"] == "Downloaded"), {})
            if cond.get("reason") != "Downloading" or status.get("observedGeneration") != other["metadata"].get("generation"):
                continue
            try:
                out[base_dir(parse_model(other, rules=False))] = other["metadata"]["name"]
            except ValidationError:
                continue
        return out

    def _pods_and_log(self, ns: str, job: dict | None, container: str):
        if not job:
            return [], None
        labels = {JOB_LABEL: job["metadata"]["name"]}
        pods = owned_pods(job, self._list("Pod", ns, labels))
        state = job_state(job)
        if self.cache and state in ("succeeded", "failed") and termination_message(pods, container) is None:
            # The Job's watch can run ahead of the pods' watch: read the pods themselves once.
            pods = owned_pods(job, self.kube.list("Pod", ns, labels))
            for pod in pods:
                self.cache.put("Pod", pod)
        log_text = None
        if state == "running":
            running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
            if running:
                log_text = self.kube.pod_log(ns, running[0]["metadata"]["name"], container)
        return pods, log_text

    def _gpu_memory(self, model) -> str | None:
        wanted = model.spec.gpu_memory
        profile = self.settings.profiles.get(wanted or "") or {}
        return str(profile.get("memory")) if profile.get("memory") else wanted

    def _execute_all(self, actions: list[Action]) -> bool:
        """Apply the actions; True when a create found the object already there (cache behind)."""
        behind = False
        for action in actions:
            behind |= self._execute(action)
        return behind

    def _report(self, body: dict, decision: Decision) -> None:
        """One status patch per pass, only when something changed; an Event per transition."""
        meta = body["metadata"]
        if changed(body.get("status"), decision.status):
            patched = self.kube.patch("Model", meta["namespace"], meta["name"],
                                      {"status": _merge_patch(body.get("status") or {}, decision.status)}, sub="status")
            self._remember("Model", patched)
        stamp = now()
        for ev in decision.events:
            self.kube.event(body, ev["type"], ev["reason"], ev["message"], stamp)
            if ev["type"] == "Warning":
                metrics.ERRORS.labels(reason=ev["reason"]).inc()

    def _remember(self, kind: str, obj: dict | None) -> None:
        if self.cache and obj:
            self.cache.put(kind, obj)

    def _execute(self, action: Action) -> bool:
        m, kind = action.obj["metadata"], action.obj["kind"]
        log.info("%s/%s: %s", m["namespace"], m["name"], action.key)
        if action.verb == "create":
            created = self.kube.create(action.obj)
            if created is None:  # 409: it exists; refresh what we know of it
                self._remember(kind, self.kube.get(kind, m["namespace"], m["name"]))
                return True
            self._remember(kind, created)
        elif action.verb == "replace":
            self._remember(kind, self.kube.replace(action.obj))
        elif action.verb == "scale":
            self._remember(kind, self.kube.patch(kind, m["namespace"], m["name"], {"spec": {"replicas": action.replicas}}))
        elif action.verb == "delete":
            self.kube.delete(kind, m["namespace"], m["name"], uid=m.get("uid"))
            if self.cache:
                self.cache.forget(kind, action.obj)
        else:
            raise ValueError(action.verb)
        return False

    def _invalid(self, body: dict, exc: ValidationError) -> None:
        meta = body["metadata"]
        sb = StatusBuilder(body.get("status"), meta.get("generation"))
        message = "; ".join(f"{path}: {msg}" for path, msg in exc.issues)
        sb.condition("Degraded", True, "InvalidSpec", message)
        sb.condition("Ready", False, "InvalidSpec", message)
        decision = Decision(status=sb.build("Failed"))
        decision.events = [{"type": "Warning", "reason": "InvalidSpec", "message": message}] if sb.transitions() else []
        self._report(body, decision)


def _merge_patch(old: dict, new: dict, top: bool = True) -> dict:
    """A JSON merge patch from old to new status: removed keys (at any depth) become null."""
    patch = dict(new)
    for key, value in old.items():
        if key not in new and not (top and key == "kopf"):
            patch[key] = None
        elif isinstance(value, dict) and isinstance(new.get(key), dict):
            patch[key] = _merge_patch(value, new[key], top=False)
    return patch

