"""The autoscaler's arithmetic, pure and apart from its I/O (KubeAI's modelautoscaler).

desired = ceil(moving average of in-flight requests / targetInFlight), within min/max, and

* at least 1 while requests are held or in flight (scale from zero happens on the first request);
* up at once, down only after the load has stayed lower for ``scale_down_delay_s``;
* never down while a replica is still loading: a ReplicaSet removes not-ready pods first, so
  shrinking then would kill the replica that is paying its cold start.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Policy:
    min_replicas: int = 1
    max_replicas: int = 1
    target_in_flight: int = 8
    scale_down_delay_s: float = 30.0

    def __post_init__(self):
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError(f"need 0 <= minReplicas <= maxReplicas and maxReplicas >= 1, got "
                             f"{self.min_replicas}..{self.max_replicas}")
        if self.target_in_flight < 1:
            raise ValueError(f"targetInFlight must be >= 1, got {self.target_in_flight}")

    @classmethod
    def from_spec(cls, scaling) -> "Policy":
        """From an ``api.Scaling`` (None: one fixed replica)."""
        if scaling is None:
            return cls()
        return cls(scaling.min_replicas, scaling.max_replicas, scaling.target_in_flight,
                   float(scaling.scale_down_delay_seconds))


class MovingAverage:
    """The mean of the last ``window`` samples."""

    def __init__(self, window: int = 10):
        if window < 1:
            raise ValueError("window must be >= 1")
        self.samples: deque[float] = deque(maxlen=window)

    def add(self, value: float) -> float:
        self.samples.append(float(value))
        return self.value

    @property
    def value(self) -> float:
        return sum(self.samples) / len(self.samples) if self.samples else 0.0


def wanted(policy: Policy, avg_in_flight: float, busy: bool) -> int:
    """ceil(avg / target) within min/max; at least 1 while requests are held or in flight."""
    raw = math.ceil(max(avg_in_flight, 0.0) / policy.target_in_flight - 1e-9)
    if busy:
        raw = max(raw, 1)
    return max(policy.min_replicas, min(policy.max_replicas, raw))


@dataclass
class ScaleState:
    """What the autoscaler remembers between ticks for one Model."""

    average: MovingAverage = field(default_factory=MovingAverage)
    last_needed_at: float | None = None  # last time the current count (or more) was needed


def decide(policy: Policy, state: ScaleState, now: float, in_flight: int, held: int,
           current: int, loading: int) -> int:
    """The replica count to ask for now.

    ``in_flight``: requests being answered; ``held``: requests waiting for a replica;
    ``current``: the Deployment's replicas; ``loading``: replicas that exist and are not ready.
    """
    avg = state.average.add(in_flight + held)
    target = wanted(policy, avg, busy=(in_flight + held) > 0)
    if state.last_needed_at is None:
        state.last_needed_at = now
    if target >= current:
        state.last_needed_at = now
        return target
    if loading > 0 or now - state.last_needed_at < policy.scale_down_delay_s:
        return current
    state.last_needed_at = now
    return target
