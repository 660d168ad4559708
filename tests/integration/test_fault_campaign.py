"""The fault campaign: the operator under the faults of a real cluster's day 2, each test printing
its figures.

- 50 Models while the operator (a real `modelyard operator` process) is SIGKILLed mid-pass and
  restarted, three times: every Model Ready, no duplicate or orphaned child, every child
  controlled by the right Model uid.
- Children deleted at random while Models progress: all put back; no status written after a
  Deployment's deletion claims Ready while it is gone.
- The emulator answering 8% of the operator's requests with 500, 409 or a lost answer: the
  operator converges with nothing lost.

The test plays the Job and Deployment controllers (tests/integration/play.py).
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.play import PLAN, finish_job, model, roll_out
from tests.k8s import errors
from tests.k8s.faults import Faults
from tests.k8s.operator_thread import run_operator

CHILD_KINDS = ("Job", "Deployment", "Service", "PersistentVolumeClaim", "ConfigMap")
COMPONENT, INSTANCE = "app.kubernetes.io/component", "app.kubernetes.io/instance"


def models(n: int, ns: str, prefix: str) -> list[dict]:
    """Every fifth Model needs a convert step (pytorch weights), every seventh serves an adapter."""
    out = []
    for i in range(n):
        spec = {"format": "pytorch"} if i % 5 == 0 else {}
        if i % 7 == 0:
            spec["adapters"] = [{"name": "sql", "uri": "hf://org/sql-lora"}]
        out.append(model(f"{prefix}{i}", ns, **spec))
    return out


def play(k8s, ns: str) -> None:
    """One round of the controllers the emulator lacks: finish started Jobs, roll out Deployments."""
    for job in k8s.list("Job", ns):
        if (job.get("status") or {}).get("conditions"):
            continue
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        message = {"resolvedRevision": "r1", "plan": PLAN, "files": 2, "bytes": 10}
        if job["metadata"]["labels"][COMPONENT] == "convert":
            message = {"output": args[args.index("--output") + 1]}
        try:
            finish_job(k8s, job, job["metadata"]["labels"][COMPONENT], message)
        except errors.ApiError:  # deleted or replaced meanwhile
            pass
    for dep in k8s.list("Deployment", ns):
        st = dep.get("status") or {}
        if st.get("observedGeneration") != dep["metadata"].get("generation") or st.get("readyReplicas") != dep["spec"]["replicas"]:
            try:
                roll_out(k8s, ns, dep["metadata"]["name"])
            except errors.ApiError:
                pass


def phases(k8s, ns: str) -> Counter:
    return Counter(((m.get("status") or {}).get("phase") or "None") for m in k8s.list("Model", ns))


def converge(k8s, ns: str, n: int, timeout: float, during=None) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        play(k8s, ns)
        if during:
            during()
        if phases(k8s, ns)["Ready"] == n:
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"not converged after {timeout} s: {dict(phases(k8s, ns))}")


def audit(k8s, ns: str) -> dict:
    """Children per Model: expected ones present, none extra, every one controlled by its Model's uid."""
    uids = {m["metadata"]["name"]: m["metadata"]["uid"] for m in k8s.list("Model", ns)}
    wrong, seen = [], Counter()
    for kind in CHILD_KINDS:
        for obj in k8s.list(kind, ns):
            meta = obj["metadata"]
            refs = [r for r in meta.get("ownerReferences") or [] if r.get("controller")]
            if len(refs) != 1 or refs[0].get("kind") != "Model" or uids.get(refs[0]["name"]) != refs[0]["uid"]:
                wrong.append(f"{kind} {meta['name']}")
                continue
            seen[(refs[0]["name"], kind, meta["labels"].get(COMPONENT))] += 1
    duplicates = [key for key, count in seen.items() if count > 1]
    missing = [f"{name}: {kind} {comp}" for name in uids for kind, comp in
               [("Job", "download"), ("Deployment", "server"), ("Service", "server"), ("PersistentVolumeClaim", "cache")]
               if seen[(name, kind, comp)] != 1]
    return {"orphans_or_wrong_owner": wrong, "duplicates": duplicates, "missing": missing,
            "children": sum(seen.values())}


def assert_clean(report: dict) -> None:
    assert not report["orphans_or_wrong_owner"] and not report["duplicates"] and not report["missing"], report


@pytest.fixture
def operator_process(kubeconfig, tmp_path):
    """`modelyard operator` as a real process, SIGKILLable; yields a function that (re)starts it."""
    procs: list[subprocess.Popen] = []
    log = tmp_path / "operator.log"

    def start() -> subprocess.Popen:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "MODELYARD_RESYNC_SECONDS": "5"}
        with open(log, "a") as out:
            proc = subprocess.Popen([str(Path(sys.executable).parent / "modelyard"), "operator", "--metrics-port", "0"],
                                    env=env, stdout=out, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)


def test_fifty_models_survive_three_sigkills(k8s, namespace, operator_process):
    rng = random.Random(7)
    proc = operator_process()
    for body in models(50, namespace, "m"):
        k8s.create(body)
    kills, start, before = [], time.monotonic(), dict(phases(k8s, namespace))
    for _ in range(3):
        deadline = time.monotonic() + 60
        while dict(phases(k8s, namespace)) == before and time.monotonic() < deadline:  # this operator is at work
            play(k8s, namespace)
            time.sleep(0.05)
        deadline = time.monotonic() + rng.uniform(0.2, 1.0)
        while time.monotonic() < deadline:  # let it work: Jobs are finished, Deployments roll out meanwhile
            play(k8s, namespace)
            time.sleep(0.05)
        before = dict(phases(k8s, namespace))
        assert before.get("Ready", 0) < 50, "converged before the kill: the test would prove nothing"
        kills.append(before)
        proc.send_signal(signal.SIGKILL)  # mid-pass: 50 Models keep it busy
        proc.wait(10)
        proc = operator_process()
    took = converge(k8s, namespace, 50, timeout=180)
    report = audit(k8s, namespace)
    posts = Counter(j["metadata"]["labels"][COMPONENT] for j in k8s.list("Job", namespace))
    print(f"\n50 Models, 3 SIGKILLs (phases at each kill: {kills}); all Ready {took:.1f} s after the last restart "
          f"({time.monotonic() - start:.1f} s in all); children {report['children']}, Jobs {dict(posts)}, "
          f"orphans/wrong owner {len(report['orphans_or_wrong_owner'])}, duplicates {len(report['duplicates'])}, "
          f"missing {len(report['missing'])}")
    assert_clean(report)
    assert posts == Counter({"download": 50, "convert": 10})


@pytest.fixture(scope="module")
def operator(k8s_server):
    with run_operator(k8s_server[1]):
        yield


def test_random_child_deletion_is_healed_and_never_hidden(k8s, namespace, operator):
    rng = random.Random(11)
    n = 20
    for body in models(n, namespace, "d"):
        k8s.create(body)
    deleted, violations, exposure = Counter(), [], []
    gone: dict[str, tuple[float, str]] = {}  # model -> (when its Deployment was deleted, Model resourceVersion then)

    def chaos() -> None:
        if rng.random() < 0.3:
            kind = rng.choice(CHILD_KINDS)
            objs = k8s.list(kind, namespace)
            if objs:
                victim = rng.choice(objs)
                name = victim["metadata"]["name"]
                owner = victim["metadata"]["labels"].get(INSTANCE)
                if kind == "Deployment":
                    gone[owner] = (time.monotonic(), k8s.get("Model", namespace, owner)["metadata"]["resourceVersion"])
                k8s.delete(kind, namespace, name, missing_ok=True)
                deleted[kind] += 1
        check()

    def check() -> None:
        for name, (when, rv) in list(gone.items()):
            m = k8s.get("Model", namespace, name)
            if k8s.get("Deployment", namespace, name) is not None:
                gone.pop(name)
                continue
            if (m.get("status") or {}).get("phase") == "Ready":
                exposure.append(time.monotonic() - when)
                if m["metadata"]["resourceVersion"] != rv:
                    violations.append(name)  # a status written after the deletion says Ready

    end = time.monotonic() + 10
    while time.monotonic() < end:  # chaos while the Models progress
        play(k8s, namespace)
        chaos()
        time.sleep(0.05)
    took = converge(k8s, namespace, n, timeout=60, during=check)
    report = audit(k8s, namespace)
    print(f"\n{n} Models, {sum(deleted.values())} children deleted at random ({dict(deleted)}); all Ready again "
          f"{took:.1f} s after the chaos; stale Ready seen for at most {max(exposure, default=0) * 1000:.0f} ms "
          f"(before the operator's pass), Ready written while the Deployment was gone: {len(violations)}")
    assert not violations
    assert_clean(report)


def test_the_operator_converges_through_api_faults(k8s, k8s_server, namespace, operator):
    faults = Faults(rate=0.08, seed=3)
    k8s_server[0].emulator.faults = faults
    n = 30
    try:
        for body in models(n, namespace, "f"):
            k8s.create(body)
        took = converge(k8s, namespace, n, timeout=120)
    finally:
        k8s_server[0].emulator.faults = None
    report = audit(k8s, namespace)
    print(f"\n{n} Models with {faults.rate:.0%} of {faults.requests} operator requests failing "
          f"({dict(faults.counts)}): all Ready in {took:.1f} s; children {report['children']}, "
          f"orphans/wrong owner {len(report['orphans_or_wrong_owner'])}, duplicates {len(report['duplicates'])}, "
          f"missing {len(report['missing'])}")
    assert sum(faults.counts.values()) > 0
    assert_clean(report)
