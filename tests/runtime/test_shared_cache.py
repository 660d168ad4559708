"""A shared cache with real processes: two pods (two `modelyard download` processes with their own
pod names/UIDs) asking for the same bytes make one download; a pod killed mid-file is taken over
and resumed by the next, and no cache is marked complete before its bytes are all there."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.runtime.servers import start_http

MODELYARD = Path(sys.executable).parent / "modelyard"
SIZE = 3 << 20


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    root = tmp_path_factory.mktemp("http")
    (root / "w.bin").write_bytes(os.urandom(SIZE))
    with start_http(root) as server:
        yield server


def pod(name: str, url: str, dest: Path, term: Path) -> subprocess.Popen:
    env = {**os.environ, "POD_NAME": name, "MODELYARD_POD_UID": f"uid-{name}", "MODELYARD_RETRY_BACKOFF": "0.01"}
    return subprocess.Popen([str(MODELYARD), "download", "--source", url, "--dest", str(dest), "--no-plan",
                             "--termination-log", str(term)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_pods_one_download(http, tmp_path):
    http.state.reset()
    http.state.throttle["/w.bin"] = 6 << 20  # ~0.5 s: long enough for the second pod to arrive
    dest = tmp_path / "sources" / "key"
    a = pod("pod-a", http.url + "/w.bin", dest, tmp_path / "a.term")
    lease = dest.parent / "key.lease"
    deadline = time.monotonic() + 20
    while not lease.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    b = pod("pod-b", http.url + "/w.bin", dest, tmp_path / "b.term")
    out_a, out_b = a.communicate(timeout=60), b.communicate(timeout=60)
    assert a.returncode == 0 and b.returncode == 0, (out_a, out_b)
    gets = http.state.count("/w.bin")
    waiting = [json.loads(line) for line in out_b[1].splitlines() if '"waiting"' in line]
    print(f"\nshared cache: 2 pods, {gets} GET of the weights, pod-b waited: {bool(waiting)}")
    assert gets == 1, http.state.requests
    assert waiting and waiting[0]["reason"] == "WaitingForSharedDownload" and "pod-a" in waiting[0]["message"]
    assert "already downloaded" in out_b[0]
    assert hashlib.sha256((dest / "w.bin").read_bytes()).digest() == hashlib.sha256((http.state.root / "w.bin").read_bytes()).digest()
    assert not lease.exists() and not (dest / ".partial").exists()


def test_a_killed_pod_is_taken_over_and_resumed(http, tmp_path):
    http.state.reset()
    http.state.throttle["/w.bin"] = 2 << 20
    dest = tmp_path / "sources" / "key"
    a = pod("pod-a", http.url + "/w.bin", dest, tmp_path / "a.term")
    part = dest / ".partial" / "uid-pod-a" / "w.bin.incomplete"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (part.exists() and part.stat().st_size > 512 << 10):
        time.sleep(0.01)
    a.send_signal(signal.SIGKILL)
    a.wait(timeout=10)
    had = part.stat().st_size
    assert 0 < had < SIZE and not (dest / "modelyard-manifest.json").exists()  # never marked complete
    http.state.throttle.clear()
    b = pod("pod-b", http.url + "/w.bin", dest, tmp_path / "b.term")
    out = b.communicate(timeout=60)
    assert b.returncode == 0, out
    ranges = [r for m, p, r in http.state.requests if m == "GET" and p == "/w.bin" and r]
    print(f"\nkilled pod: {had} of {SIZE} bytes staged, the next pod asked for {ranges}")
    assert ranges == [f"bytes={had}-"]  # resumed, not restarted
    assert (dest / "w.bin").read_bytes() == (http.state.root / "w.bin").read_bytes()
    manifest = json.loads((dest / "modelyard-manifest.json").read_text())
    assert manifest["files"] == [{"path": "w.bin", "size": SIZE}]
