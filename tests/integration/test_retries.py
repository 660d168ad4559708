"""Failed steps retry with bounded exponential backoff (attempts and next retry time in status);
the annotation modelyard.io/retry retries at once; Jobs carry activeDeadlineSeconds."""
from __future__ import annotations

import pytest

from tests.integration.play import PLAN, condition, finish_job, model
from tests.k8s.operator_thread import run_operator

FAIL = {"error": {"reason": "ConnectionDropped", "message": "the server closed the connection 5 times"}}


@pytest.fixture(scope="module")
def operator(k8s_server, tmp_path_factory):
    config = tmp_path_factory.mktemp("config") / "config.yaml"
    config.write_text("retry: {maxAttempts: 3, baseSeconds: 1, maxSeconds: 4}\n")
    mp = pytest.MonkeyPatch()
    mp.setenv("MODELYARD_CONFIG", str(config))
    with run_operator(k8s_server[1]):
        yield
    mp.undo()


def new_job(k8s, ns, name, old_uid):
    return k8s.wait_for(lambda: (j := k8s.get("Job", ns, name)) and j["metadata"]["uid"] != old_uid and j, timeout=10,
                        message="a new Job for the retry")


def test_bounded_backoff_then_the_annotation(k8s, namespace, operator):
    k8s.create(model("flaky", namespace))
    job = k8s.wait_for(lambda: k8s.get("Job", namespace, "flaky-download"))
    assert job["spec"]["activeDeadlineSeconds"] == 86400  # no plan yet: the default deadline
    seen = []
    for attempt in (1, 2, 3):
        finish_job(k8s, job, "download", FAIL, ok=False)
        retry = k8s.wait_for(lambda: (r := k8s.get("Model", namespace, "flaky")["status"].get("retry")) and r.get("failures") == attempt and r,
                             message=f"failure {attempt} counted")
        seen.append(retry)
        assert retry["maxAttempts"] == 3 and retry["step"] == "download"
        assert k8s.get("Model", namespace, "flaky")["status"]["phase"] == "Failed"
        if attempt < 3:
            assert retry["nextRetryAt"], retry
            job = new_job(k8s, namespace, "flaky-download", job["metadata"]["uid"])
    assert "nextRetryAt" not in seen[-1]
    print(f"\nretries: {[(r['failures'], r.get('nextRetryAt')) for r in seen]}")
    degraded = condition(k8s.get("Model", namespace, "flaky"), "Degraded")
    assert degraded["reason"] == "ConnectionDropped" and "gave up after 3 attempts" in degraded["message"]
    assert "modelyard.io/retry" in degraded["message"]
    # given up: nothing happens by itself ... until the user asks
    assert k8s.get("Job", namespace, "flaky-download")["metadata"]["uid"] == job["metadata"]["uid"]
    k8s.patch("Model", namespace, "flaky", {"metadata": {"annotations": {"modelyard.io/retry": "now"}}})
    job = new_job(k8s, namespace, "flaky-download", job["metadata"]["uid"])
    k8s.wait_for(lambda: k8s.get("Model", namespace, "flaky")["status"]["phase"] == "Downloading", message="Downloading again")
    finish_job(k8s, job, "download", {"resolvedRevision": "r1", "plan": {**PLAN, "weightBytes": 10 * 2**30}})
    k8s.wait_for(lambda: k8s.get("Deployment", namespace, "flaky"), message="Deployment after the retry succeeded")
    k8s.wait_for(lambda: "retry" not in k8s.get("Model", namespace, "flaky")["status"], message="status.retry cleared")
    assert any(e["reason"] == "Retrying" for e in k8s.list("Event", namespace))


def test_does_not_fit_is_not_retried_by_itself(k8s, namespace, operator):
    k8s.create(model("big", namespace))
    job = k8s.wait_for(lambda: k8s.get("Job", namespace, "big-download"))
    finish_job(k8s, job, "download", {"error": {"reason": "DoesNotFit", "message": "too big"}, "plan": {**PLAN, "fits": False}}, ok=False)
    k8s.wait_for(lambda: k8s.get("Model", namespace, "big")["status"].get("phase") == "Failed")
    k8s.wait_for(lambda: (k8s.get("Model", namespace, "big")["status"].get("retry") or {}).get("failures") == 1)
    import time
    time.sleep(2.5)  # longer than the backoff: a retryable failure would have a new Job by now
    assert k8s.get("Job", namespace, "big-download")["metadata"]["uid"] == job["metadata"]["uid"]
