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
    http.state.throttle["/w.bin"] = 1 << 20  # ~3 s: long enough for the second pod to start and arrive
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


def test_lease_waits_for_a_live_holder_and_takes_over_a_dead_or_stale_one(tmp_path, monkeypatch):
    import socket
    import threading

    from modelyard.runtime.lease import Lease

    path = tmp_path / "k.lease"
    holder = subprocess.Popen(["sleep", "60"])  # another process on this machine holds it, heartbeat fresh
    path.write_text(json.dumps({"owner": "pod-a", "host": socket.gethostname(), "pid": holder.pid, "token": "t",
                                "heartbeat": time.time()}))
    waited, got = [], threading.Event()

    def second():
        with Lease(path, on_wait=waited.append, poll=0.05):
            got.set()
    t = threading.Thread(target=second)
    t.start()
    time.sleep(0.5)
    assert not got.is_set() and waited[0]["owner"] == "pod-a"  # it waits, and says for whom
    holder.kill()
    holder.wait()
    t.join(10)
    assert got.is_set() and not path.exists()  # a dead holder on this machine: taken over at once
    # a holder on another machine whose heartbeat stopped: taken over once stale
    path.write_text(json.dumps({"owner": "pod-gone", "host": "elsewhere", "pid": 1, "token": "t", "heartbeat": time.time() - 5}))
    monkeypatch.setenv("MODELYARD_LEASE_STALE_SECONDS", "3")
    with Lease(path, poll=0.05) as lease:
        assert json.loads(path.read_text())["token"] == lease.token


def test_convert_partial_folders_are_per_owner(tmp_path, monkeypatch):
    from modelyard.runtime.convert import publish

    out = tmp_path / "converted" / "k"
    monkeypatch.setenv("MODELYARD_POD_UID", "uid-a")
    a = publish.partial_dir(out)
    monkeypatch.setenv("MODELYARD_POD_UID", "uid-b")
    (a / "shard.safetensors").write_bytes(b"x")
    b = publish.partial_dir(out)  # b holds the lease now: a's folder is an orphan and goes
    assert a.name == "k.partial-uid-a" and b.name == "k.partial-uid-b" and not a.exists()
