import pytest

# --- Kubernetes API emulator fixtures (tests/k8s/fixtures.py) ---
from tests.k8s.fixtures import k8s, k8s_crds, k8s_server, kubeconfig, namespace  # noqa: F401
# --- end Kubernetes API emulator fixtures ---


@pytest.hookimpl(trylast=True)  # after pytest's own session teardown (session fixtures stopped)
def pytest_sessionfinish(session, exitstatus):
    """A non-daemon thread left running makes the interpreter wait for it after the summary, with no
    output, until CI's limit: name such threads now, and past 120 s (MODELYARD_EXIT_GRACE_S) of
    exiting print every thread's stack and exit 1 instead of hanging (tests/unit/test_exit_guard.py)."""
    import faulthandler
    import os
    import sys
    import threading

    left = [t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if left:
        print(f"\nnon-daemon threads still running at the end of the session: {left}", file=sys.stderr)
    faulthandler.dump_traceback_later(int(os.environ.get("MODELYARD_EXIT_GRACE_S", "120")), exit=True)
