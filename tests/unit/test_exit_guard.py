"""The suite's guard against a silent hang: a non-daemon thread left running after the last test
made pytest wait forever after its summary (CI killed it at its limit with no clue). The hook in
tests/conftest.py names such threads and, past a grace period, prints every stack and exits 1."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_thread_left_running_fails_the_run_with_its_stack(tmp_path):
    (tmp_path / "test_stuck.py").write_text(
        "import threading, time\n\n"
        "def test_leaves_a_thread():\n"
        "    threading.Thread(target=lambda: time.sleep(10**6), name='left-running').start()\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                           str(tmp_path / "test_stuck.py")], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MODELYARD_EXIT_GRACE_S": "2", "PYTHONPATH": str(ROOT)})
    assert "1 passed" in done.stdout, done.stdout[-2000:]
    assert done.returncode == 1
    assert "non-daemon threads still running at the end of the session: ['left-running']" in done.stderr
    assert "test_stuck.py" in done.stderr  # the stuck thread's stack, to start from
