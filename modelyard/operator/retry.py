"""Failed steps retry, boundedly: exponential backoff, the attempt count and the next retry time
in ``status.retry``, and the annotation ``modelyard.io/retry`` to retry at once. Pure.

A failed step Job is deleted when its retry is due; the next pass creates a fresh one. A failure
that only a spec change can fix (``DoesNotFit``) is not retried unless the annotation asks.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

RETRY_ANNOTATION = "modelyard.io/retry"
PERMANENT = {"DoesNotFit", "InvalidSpec"}


@dataclass(frozen=True)
class Policy:
    max_attempts: int = 5        # runs of a step before giving up (the first included)
    base_seconds: float = 30.0   # first backoff; doubles per failure
    max_seconds: float = 1800.0  # backoff cap

    def backoff(self, failures: int) -> float:
        return min(self.base_seconds * 2 ** max(failures - 1, 0), self.max_seconds)


@dataclass
class Verdict:
    delete_job: bool   # retry now: delete the failed Job
    message: str       # appended to the failure message
    wait: float | None  # seconds until the retry is due
    status: dict        # the new status.retry
    final: bool         # no retry will happen by itself


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _parse(text: str | None) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def on_failure(previous: dict | None, step: str, generation: int | None, job_uid: str | None, reason: str,
               annotation: str | None, policy: Policy, now: dt.datetime) -> Verdict:
    """What to do about a failed step Job (``previous`` is the last status.retry)."""
    prev = previous or {}
    same = prev.get("step") == step and prev.get("generation") == generation
    failures = int(prev.get("failures") or 0) if same else 0
    new_failure = not same or prev.get("jobUid") != job_uid
    if new_failure:
        failures += 1
    asked = bool(annotation) and annotation != prev.get("handled")
    base = {"step": step, "generation": generation, "jobUid": job_uid, "failures": failures,
            "maxAttempts": policy.max_attempts, "handled": annotation if asked else prev.get("handled")}
    if asked:  # the user asked: retry now, with a fresh budget
        return Verdict(True, f"; retrying now ({RETRY_ANNOTATION}={annotation})", None, {**base, "failures": 0}, False)
    if reason in PERMANENT:
        return Verdict(False, "", None, {**base, "nextRetryAt": None}, True)
    if failures >= policy.max_attempts:
        return Verdict(False, f"; gave up after {failures} attempts (annotate the Model with {RETRY_ANNOTATION}=<any new "
                       "value> to try again)", None, {**base, "nextRetryAt": None}, True)
    due = (now + dt.timedelta(seconds=policy.backoff(failures))) if new_failure else (_parse(prev.get("nextRetryAt")) or now)
    wait = (due - now).total_seconds()
    base = {**base, "nextRetryAt": _iso(due)}
    if wait <= 0:
        return Verdict(True, f"; retrying (attempt {failures + 1} of {policy.max_attempts})", None, base, False)
    return Verdict(False, f"; attempt {failures} of {policy.max_attempts} failed, retrying at {_iso(due)}",
                   wait, base, False)
