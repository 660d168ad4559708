"""`K8s`: the convenience object tests get from the `k8s` fixture.

It talks to the emulator's store directly (same semantics and events as the HTTP API, without
the round trip), so tests can play the Job and Deployment controllers with `patch_status`.
"""
from __future__ import annotations

import copy
import pathlib
import time
from collections.abc import Callable
from typing import Any

from tests.k8s import errors, patching
from tests.k8s.registry import ResourceType
from tests.k8s.runner import EmulatorThread
from tests.k8s.selectors import combined


def _selector(labels: dict | str | None) -> str | None:
    if isinstance(labels, dict):
        return ",".join(f"{k}={v}" for k, v in labels.items())
    return labels


class K8s:
    def __init__(self, emu: EmulatorThread, kubeconfig: pathlib.Path) -> None:
        self.emu, self.kubeconfig = emu, kubeconfig

    @property
    def url(self) -> str:
        return self.emu.url

    @property
    def store(self):
        assert self.emu.emulator is not None
        return self.emu.emulator.store

    def resource(self, kind: str, api_version: str | None = None) -> ResourceType:
        """A kind, plural, short name (`Job`, `jobs`, `models`, `cm`) or apiVersion+kind."""
        reg = self.store.registry
        rt = reg.by_kind(api_version, kind) if api_version else reg.by_name(kind)
        if rt is None:
            raise KeyError(f"unknown kind {kind!r}" + (f" in {api_version}" if api_version else ""))
        return rt

    def get(self, kind: str, ns: str | None, name: str) -> dict | None:
        """The object as stored, or None when there is none."""
        rt = self.resource(kind)
        found = self.emu.call(self.store.find, rt, ns, name)
        return copy.deepcopy(found)

    def list(self, kind: str, ns: str | None = None, labels: dict | str | None = None,
             fields: str | None = None) -> list[dict]:
        rt = self.resource(kind)
        items, _ = self.emu.call(self.store.list, rt, ns, combined(_selector(labels), fields))
        return copy.deepcopy(items)

    def create(self, obj: dict, ns: str | None = None) -> dict:
        rt = self.resource(obj["kind"], obj.get("apiVersion"))
        ns = ns or (obj.get("metadata") or {}).get("namespace")
        return copy.deepcopy(self.emu.call(self.store.create, rt, ns, obj))

    def patch(self, kind: str, ns: str | None, name: str, patch: dict) -> dict:
        """A JSON merge patch of the main resource (status changes are ignored where it has one)."""
        return self._merge(kind, ns, name, patch, None)

    def patch_status(self, kind: str, ns: str | None, name: str, status: dict) -> dict:
        """Merge `status` into the object's status through the /status subresource."""
        return self._merge(kind, ns, name, {"status": status}, "status")

    def _merge(self, kind: str, ns: str | None, name: str, patch: dict, sub: str | None) -> dict:
        rt = self.resource(kind)

        def run() -> dict:
            current = self.store.get(rt, ns, name)
            return self.store.update(rt, ns, name, patching.merge_patch(current, patch), sub)
        return copy.deepcopy(self.emu.call(run))

    def delete(self, kind: str, ns: str | None, name: str, missing_ok: bool = False) -> dict | None:
        rt = self.resource(kind)
        try:
            return copy.deepcopy(self.emu.call(self.store.delete, rt, ns, name))
        except errors.ApiError as exc:
            if exc.code == 404 and missing_ok:
                return None
            raise

    def set_pod_log(self, ns: str, name: str, text: str) -> None:
        """What `GET pods/<name>/log` (and `kubectl logs`) answers for this pod."""
        self.emu.call(self.store.logs.__setitem__, (ns, name), text)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
                 message: str = "") -> Any:
        """Poll `predicate` until it returns something truthy; fail with `message` after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for "
                                     f"{message or getattr(predicate, '__name__', 'a condition')}")
            time.sleep(interval)

    def wait_gone(self, kind: str, ns: str | None, name: str, timeout: float = 10.0) -> None:
        self.wait_for(lambda: self.get(kind, ns, name) is None, timeout, message=f"{kind} {ns}/{name} to be gone")
