"""List, then watch, one kind of object (client-go's informer, in a thread): a store of objects by
(namespace, name) that the API's watch events keep current, so the gateway reads the cluster
without asking it. A watch that ends — its ``timeout_seconds`` (the resync period), a dropped
connection, or 410 Gone when its resourceVersion has expired — is followed by a fresh list, so a
missed event is repaired within ``resync_s``. While the API server is away the store keeps what it
had: the gateway goes on routing to what it knows."""
from __future__ import annotations

import json
import logging
import threading
from typing import Callable

log = logging.getLogger("modelyard.gateway")


def key(obj: dict) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


class Informer:
    """``list_fn(**kwargs)`` is a kubernetes client list call (typed or custom objects);
    ``on_change()`` is called from this thread after every change to the store."""

    def __init__(self, kind: str, list_fn: Callable, on_change: Callable[[], None], resync_s: float = 60.0,
                 **kwargs):
        self.kind, self.list_fn, self.on_change, self.kwargs = kind, list_fn, on_change, kwargs
        self.resync_s = resync_s
        self.store: dict[tuple[str, str], dict] = {}
        self.synced = threading.Event()
        self.lists = 0  # how many times it listed (the first, then once per resync or lost watch)
        self._stop = threading.Event()
        self._watch = None

    def start(self) -> "Informer":
        threading.Thread(target=self._run, name=f"informer-{self.kind}", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def items(self) -> list[dict]:
        return list(self.store.values())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._list_and_watch()
            except Exception as exc:  # API server away, 410 Gone, a broken stream: list again
                log.warning("watching %s: %s; listing again", self.kind, getattr(exc, "reason", None) or exc)
                self._stop.wait(1.0)

    def _list_and_watch(self) -> None:
        import kubernetes

        resp = self.list_fn(**self.kwargs, _preload_content=False)
        listed = json.loads(resp.data)
        self.lists += 1
        self.store = {key(o): o for o in listed.get("items") or []}
        self.synced.set()
        self.on_change()
        self._watch = kubernetes.watch.Watch()
        for event in self._watch.stream(self.list_fn, resource_version=listed["metadata"]["resourceVersion"],
                                        timeout_seconds=max(1, int(self.resync_s)), deserialize=False, **self.kwargs):
            if self._stop.is_set():
                return
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "DELETED":
                self.store.pop(key(obj), None)
            elif kind in ("ADDED", "MODIFIED"):
                self.store[key(obj)] = obj
            else:
                continue  # BOOKMARK
            self.on_change()
