"""The autoscaler's arithmetic: ceil(avg / target) within min/max, scale-down after the delay,
never while a replica loads, and at least one replica as soon as a request is held."""
from __future__ import annotations

import pytest

from modelyard.api import parse_model
from modelyard.gateway.autoscale import MovingAverage, Policy, ScaleState, decide, wanted


def test_moving_average_forgets_old_samples():
    avg = MovingAverage(window=3)
    assert avg.value == 0.0
    for v in (3, 3, 3, 0):
        avg.add(v)
    assert avg.value == pytest.approx(2.0)


@pytest.mark.parametrize("avg,busy,expected", [
    (0, False, 0), (0, True, 1), (0.5, True, 1), (4, False, 1), (4.01, False, 2), (16, False, 4),
    (17, False, 5), (400, False, 5),
])
def test_wanted_is_ceil_of_average_over_target_within_bounds(avg, busy, expected):
    assert wanted(Policy(0, 5, 4, 30), avg, busy) == expected


def test_min_replicas_is_a_floor():
    assert wanted(Policy(2, 5, 4, 30), 0, False) == 2


def test_held_request_scales_from_zero_at_once():
    state = ScaleState()
    assert decide(Policy(0, 3, 4, 30), state, now=0, in_flight=0, held=0, current=0, loading=0) == 0
    assert decide(Policy(0, 3, 4, 30), state, now=1, in_flight=0, held=1, current=0, loading=0) == 1


def test_scale_up_is_immediate_and_down_waits_for_the_delay():
    policy, state = Policy(0, 4, 2, 10), ScaleState(average=MovingAverage(window=1))
    assert decide(policy, state, now=0, in_flight=8, held=0, current=1, loading=0) == 4
    assert decide(policy, state, now=1, in_flight=0, held=0, current=4, loading=0) == 4
    assert decide(policy, state, now=9.5, in_flight=0, held=0, current=4, loading=0) == 4
    assert decide(policy, state, now=10.5, in_flight=0, held=0, current=4, loading=0) == 0


def test_load_coming_back_restarts_the_delay():
    policy, state = Policy(0, 4, 2, 10), ScaleState(average=MovingAverage(window=1))
    decide(policy, state, now=0, in_flight=4, held=0, current=2, loading=0)
    decide(policy, state, now=8, in_flight=0, held=0, current=2, loading=0)
    assert decide(policy, state, now=9, in_flight=3, held=0, current=2, loading=0) == 2
    assert decide(policy, state, now=15, in_flight=0, held=0, current=2, loading=0) == 2
    assert decide(policy, state, now=19.5, in_flight=0, held=0, current=2, loading=0) == 0


def test_never_scales_down_while_a_replica_is_loading():
    policy, state = Policy(0, 4, 2, 1), ScaleState(average=MovingAverage(window=1))
    decide(policy, state, now=0, in_flight=6, held=0, current=3, loading=1)
    for t in (5, 50, 500):
        assert decide(policy, state, now=t, in_flight=0, held=0, current=3, loading=1) == 3
    assert decide(policy, state, now=501, in_flight=0, held=0, current=3, loading=0) == 0


def test_average_smooths_a_burst():
    policy, state = Policy(0, 10, 1, 0), ScaleState(average=MovingAverage(window=4))
    assert decide(policy, state, now=0, in_flight=8, held=0, current=1, loading=0) == 8
    # one burst sample, then quiet: the average decays over the window, not at once
    assert decide(policy, state, now=1, in_flight=0, held=0, current=8, loading=0) == 4


def test_policy_from_spec_and_bad_values():
    model = parse_model({"apiVersion": "modelyard.io/v1alpha1", "kind": "Model", "metadata": {"name": "m"},
                         "spec": {"source": {"uri": "hf://a/b"}, "replicas": 0,
                                  "scaling": {"minReplicas": 0, "maxReplicas": 3, "targetInFlight": 2,
                                              "scaleDownDelaySeconds": 7}}})
    assert Policy.from_spec(model.spec.scaling) == Policy(0, 3, 2, 7.0)
    assert Policy.from_spec(None) == Policy(1, 1, 8, 30.0)
    with pytest.raises(ValueError, match="minReplicas <= maxReplicas"):
        Policy(3, 2)
    with pytest.raises(ValueError, match="targetInFlight"):
        Policy(0, 1, 0)
