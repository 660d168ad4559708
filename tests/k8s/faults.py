"""Fault mode: the emulator answers a share of requests the way a loaded API server does.

    emulator.faults = Faults(rate=0.08, seed=1)

Each non-watch request under /api and /apis is, with probability ``rate``, answered with one of:

- ``500``: InternalError, nothing done;
- ``409``: Conflict ("the object has been modified"), nothing done (writes only; reads get 500);
- ``timeout``: the request *is* carried out, then the connection is closed without an answer, so
  the client cannot tell whether its write happened (what a client-side timeout looks like).

Watches are left alone (a broken watch is kopf's business, tested by kopf). ``counts`` says what
was injected.
"""
from __future__ import annotations

import collections
import random
import threading

KINDS = ("500", "409", "timeout")
WRITES = {"POST", "PUT", "PATCH", "DELETE"}


class Faults:
    def __init__(self, rate: float, seed: int = 0, kinds: tuple[str, ...] = KINDS) -> None:
        if not 0 <= rate <= 1:
            raise ValueError(f"rate must be within 0..1, not {rate}")
        self.rate, self.kinds = rate, kinds
        self.random = random.Random(seed)
        self.counts: collections.Counter[str] = collections.Counter()
        self.requests = 0
        self._lock = threading.Lock()

    def pick(self, method: str, path: str, query: dict) -> str | None:
        """The fault for this request, or None."""
        if query.get("watch") in ("true", "1") or not path.startswith(("/api/", "/apis/")):
            return None
        with self._lock:
            self.requests += 1
            if self.random.random() >= self.rate:
                return None
            kind = self.random.choice(self.kinds)
            if kind == "409" and method not in WRITES:
                kind = "500"
            self.counts[kind] += 1
            return kind
