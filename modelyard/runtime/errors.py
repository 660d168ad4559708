"""Errors raised by the runtime steps (download, convert, serve).

Each carries a CamelCase ``reason`` (what the operator shows in a condition) and a ``message``
a user can act on. ``termination_message()`` is the JSON the Job writes to its termination log.
Keep this module tiny and additive: each step adds its own subclass here.
"""
from __future__ import annotations

import json
import os
import sys

from modelyard.uri import scrub

TERMINATION_LOG = "/dev/termination-log"


class RuntimeStepError(Exception):
    """A step failed for a reason the user can act on."""

    def __init__(self, reason: str, message: str):
        message = scrub(message)  # a URI in a message never carries its credentials
        super().__init__(message)
        self.reason = reason
        self.message = message

    def termination_message(self) -> dict:
        return {"error": {"reason": self.reason, "message": self.message}}


class ConvertError(RuntimeStepError):
    """`modelyard convert` failed: bad input, unsupported format, failed verification."""


class DownloadError(RuntimeStepError):
    """`modelyard download` failed. Reasons: RepositoryNotFound, RevisionNotFound, Unauthorized,
    DiskFull, ChecksumMismatch, ConnectionDropped, DoesNotFit (exit 3), InvalidSource."""

    def __init__(self, reason: str, message: str, plan: dict | None = None):
        super().__init__(reason, message)
        self.plan = plan

    @property
    def exit_code(self) -> int:
        return 3 if self.reason == "DoesNotFit" else 1

    def termination_message(self) -> dict:
        return {**super().termination_message(), "plan": self.plan}


def fail_step(err: RuntimeStepError, command: str, code: int = 2) -> int:
    """Say why on stderr and, in a pod, in the termination log the operator reads; return the exit code.

    The log is written only where it exists (Kubernetes creates it); $MODELYARD_TERMINATION_LOG
    points elsewhere (tests)."""
    print(f"modelyard {command}: {err.message}", file=sys.stderr, flush=True)
    path = os.environ.get("MODELYARD_TERMINATION_LOG", TERMINATION_LOG)
    if os.path.exists(path):
        try:
            with open(path, "w") as f:
                json.dump(err.termination_message(), f)
        except OSError:
            pass
    return code
