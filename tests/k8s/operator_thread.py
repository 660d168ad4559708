"""Run a real kopf operator in its own thread and event loop (pytest's loop breaks its teardown).

    with run_operator(kubeconfig):            # imports modelyard.operator.handlers
        ...
    with run_operator(kubeconfig, modules=[], registry=my_registry):
        ...

Standalone (no peering), cluster-wide. Leaving the block stops it cleanly; entering again starts
a fresh operator (tests restart it mid-flight).
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import pathlib
import threading
from collections.abc import Iterator, Sequence

DEFAULT_MODULES = ("modelyard.operator.handlers",)


def _point_client_at(kubeconfig: str | os.PathLike) -> None:
    from kubernetes.config import kube_config
    os.environ["KUBECONFIG"] = str(kubeconfig)
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(kubeconfig)


@contextlib.contextmanager
def run_operator(kubeconfig: str | os.PathLike | pathlib.Path, modules: Sequence[str] = DEFAULT_MODULES,
                 registry=None, timeout: float = 30.0) -> Iterator[threading.Thread]:
    import kopf
    _point_client_at(kubeconfig)
    for module in modules:
        importlib.import_module(module)  # kopf handlers register themselves on import
    ready, stop = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def main() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(kopf.operator(
                standalone=True, clusterwide=True, ready_flag=ready, stop_flag=stop,
                **({"registry": registry} if registry is not None else {})))
        except BaseException as exc:  # reported to the test below
            failure.append(exc)
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=main, name="kopf-operator", daemon=True)
    thread.start()
    if not ready.wait(timeout) or failure:
        stop.set()
        thread.join(timeout)
        raise RuntimeError(f"the kopf operator did not become ready within {timeout} s: {failure!r}")
    try:
        yield thread
    finally:
        stop.set()
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"the kopf operator did not stop within {timeout} s")
