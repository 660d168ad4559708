"""Picking a replica (KubeAI's loadbalancer): least in-flight, or prefix hash with bounded load.

Both are pure: they take the candidates (replicas that are ready and, for an adapter, have it
loaded) and their in-flight counts, and return one address.
"""
from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Mapping, Sequence

PREFIX_CHARS = 100   # how much of the prompt decides the hash (KubeAI's default)
LOAD_FACTOR = 1.25   # no replica takes more than 125% of the mean load (bounded-load hashing)
VNODES = 64          # points per replica on the ring


def least_loaded(candidates: Sequence[str], in_flight: Mapping[str, int], turn: int = 0) -> str:
    """The candidate with the fewest requests in flight; ties broken by rotating with ``turn``."""
    if not candidates:
        raise ValueError("no candidates")
    low = min(in_flight.get(c, 0) for c in candidates)
    tied = sorted(c for c in candidates if in_flight.get(c, 0) == low)
    return tied[turn % len(tied)]


def _h(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def prefix_key(model: str, prompt: str, chars: int = PREFIX_CHARS) -> str:
    return f"{model}\x00{prompt[:chars]}"


def bounded_load_hash(candidates: Sequence[str], in_flight: Mapping[str, int], key: str,
                      load_factor: float = LOAD_FACTOR) -> str:
    """Consistent hashing with bounded load: walk the ring from ``hash(key)`` and take the first
    replica whose in-flight count is below ceil(load_factor * mean load, counting this request)."""
    if not candidates:
        raise ValueError("no candidates")
    total = sum(in_flight.get(c, 0) for c in candidates) + 1
    bound = math.ceil(load_factor * total / len(candidates))
    ring = sorted((_h(f"{c}#{i}"), c) for c in candidates for i in range(VNODES))
    start = bisect.bisect(ring, (_h(key), ""))
    seen: set[str] = set()
    for i in range(len(ring)):
        addr = ring[(start + i) % len(ring)][1]
        if addr in seen:
            continue
        seen.add(addr)
        if in_flight.get(addr, 0) + 1 <= bound:
            return addr
    return least_loaded(candidates, in_flight)
