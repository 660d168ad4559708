"""pytest fixtures: `k8s_crds`, `k8s_server` (module), `k8s` (helper), `namespace`, `kubeconfig`.

Re-exported from tests/conftest.py. A test module can override `k8s_crds` (module scope) to
preload other CRDs; by default the repo's crds/models.modelyard.io.yaml is loaded when present.
"""
from __future__ import annotations

import os
import pathlib
import uuid

import pytest

from tests.k8s.helper import K8s
from tests.k8s.runner import EmulatorThread

REPO = pathlib.Path(__file__).resolve().parents[2]
MODEL_CRD = REPO / "crds" / "models.modelyard.io.yaml"


def _point_clients_at(path: pathlib.Path | None) -> str | None:
    """Set $KUBECONFIG and the kubernetes client's import-time default; return the old $KUBECONFIG."""
    from kubernetes.config import kube_config
    old = os.environ.get("KUBECONFIG")
    if path is None:
        os.environ.pop("KUBECONFIG", None)
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = os.path.expanduser("~/.kube/config")
    else:
        os.environ["KUBECONFIG"] = str(path)
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(path)
    return old


@pytest.fixture(scope="module")
def k8s_crds() -> list:
    """CRDs (paths or dicts) the module's emulator starts with."""
    return [MODEL_CRD] if MODEL_CRD.exists() else []


@pytest.fixture(scope="module")
def k8s_server(k8s_crds, tmp_path_factory):
    """A running emulator for the test module, with $KUBECONFIG pointing at it."""
    emu = EmulatorThread(crds=k8s_crds).start()
    path = emu.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")
    old = _point_clients_at(path)
    try:
        yield emu, path
    finally:
        emu.stop()
        _point_clients_at(pathlib.Path(old) if old else None)


@pytest.fixture
def k8s(k8s_server) -> K8s:
    emu, path = k8s_server
    return K8s(emu, path)


@pytest.fixture
def kubeconfig(k8s_server) -> pathlib.Path:
    return k8s_server[1]


@pytest.fixture
def namespace(k8s: K8s):
    """A fresh namespace per test, deleted (with its contents) afterwards."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    k8s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    k8s.delete("Namespace", None, name, missing_ok=True)
