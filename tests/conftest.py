# --- Kubernetes API emulator fixtures (tests/k8s/fixtures.py) ---
from tests.k8s.fixtures import k8s, k8s_crds, k8s_server, kubeconfig, namespace  # noqa: F401
# --- end Kubernetes API emulator fixtures ---
