"""Run the emulator on 127.0.0.1 in a background thread (tests) or the foreground (CLI)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import pathlib
import threading
from collections.abc import Callable
from typing import Any

import kmock
import yaml

from tests.k8s import errors
from tests.k8s.server import Emulator

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def kubeconfig_text(url: str, namespace: str = "default") -> str:
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "emulator", "user": {"token": "emulator-token"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator",
                                                      "namespace": namespace}}],
        "current-context": "emulator",
    }, sort_keys=False)


def crd_documents(source: str | pathlib.Path | dict) -> list[dict]:
    """The CustomResourceDefinitions in a YAML file, a directory of them, or one dict."""
    if isinstance(source, dict):
        return [source]
    path = pathlib.Path(source)
    files = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml")) if path.is_dir() else [path]
    docs = []
    for file in files:
        for doc in yaml.safe_load_all(file.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                docs.append(doc)
    if not docs:
        raise ValueError(f"{path}: no CustomResourceDefinition found (expected kind: CustomResourceDefinition)")
    return docs


def seed(emulator: Emulator, crds: list[dict]) -> None:
    """Default namespaces and preloaded CRDs (synchronous, on the server's loop)."""
    store = emulator.store
    ns_rt = store.registry.get("", "v1", "namespaces")
    crd_rt = store.registry.get("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    for name in DEFAULT_NAMESPACES:
        if store.find(ns_rt, None, name) is None:
            store.create(ns_rt, None, {"metadata": {"name": name}})
    for crd in crds:
        try:
            store.create(crd_rt, None, crd)
        except errors.ApiError as exc:
            if exc.code != 409:
                raise


class EmulatorThread:
    """`with EmulatorThread(crds=[...]) as emu:` — a live server; `emu.url`, `emu.call(fn)`."""

    def __init__(self, port: int = 0, crds: list[str | pathlib.Path | dict] = ()) -> None:
        self.port = port
        self.crds = [doc for src in crds for doc in crd_documents(src)]
        self.emulator: Emulator | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "EmulatorThread":
        self._thread = threading.Thread(target=self._main, name="k8s-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the Kubernetes emulator did not start within 30 s")
        if self._error is not None:
            raise RuntimeError(f"the Kubernetes emulator failed to start: {self._error!r}") from self._error
        return self

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.emulator = Emulator()
        seed(self.emulator, self.crds)
        async with self.emulator, kmock.Server(self.emulator, port=self.port or None) as server:
            self.port = server.port
            self._ready.set()
            await self._stop.wait()

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None and self._thread is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args)` on the server's loop (where the store lives) and return its result."""
        assert self.loop is not None, "the emulator is not running"

        async def run() -> Any:
            return fn(*args, **kwargs)
        future: concurrent.futures.Future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        return future.result(30)

    def write_kubeconfig(self, path: str | pathlib.Path, namespace: str = "default") -> pathlib.Path:
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(kubeconfig_text(self.url, namespace))
        return path

    def __enter__(self) -> "EmulatorThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
