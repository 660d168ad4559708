"""Load balancing: least in-flight, and prefix hashing that is sticky but bounded in load."""
from __future__ import annotations

from collections import Counter

import pytest

from modelyard.gateway.balance import bounded_load_hash, least_loaded, prefix_key

REPLICAS = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"]


def test_least_loaded_picks_fewest_in_flight():
    assert least_loaded(REPLICAS, {"10.0.0.1:8000": 3, "10.0.0.2:8000": 1, "10.0.0.3:8000": 2}) == "10.0.0.2:8000"


def test_least_loaded_rotates_among_ties():
    picks = {least_loaded(REPLICAS, {}, turn=t) for t in range(3)}
    assert picks == set(REPLICAS)


def test_least_loaded_spreads_a_stream_of_requests_evenly():
    load: Counter = Counter()
    for t in range(30):
        load[least_loaded(REPLICAS, load, turn=t)] += 1
    assert set(load.values()) == {10}


def test_prefix_hash_is_sticky_for_the_same_prefix():
    key = prefix_key("m", "You are a helpful assistant. " * 10)
    first = bounded_load_hash(REPLICAS, {}, key)
    assert all(bounded_load_hash(REPLICAS, {}, key) == first for _ in range(5))
    # the part past the prefix does not matter
    assert bounded_load_hash(REPLICAS, {}, prefix_key("m", "You are a helpful assistant. " * 10 + "tail")) == first


def test_prefix_hash_spreads_different_prefixes():
    picks = Counter(bounded_load_hash(REPLICAS, {}, prefix_key("m", f"prompt number {i}")) for i in range(300))
    assert set(picks) == set(REPLICAS) and min(picks.values()) > 50


def test_prefix_hash_moves_off_an_overloaded_replica():
    key = prefix_key("m", "same system prompt")
    home = bounded_load_hash(REPLICAS, {}, key)
    load = {home: 10}  # mean with this request = 11/3 → bound ceil(1.25 * 11/3) = 5
    other = bounded_load_hash(REPLICAS, load, key)
    assert other != home
    even = {r: 1 for r in REPLICAS}  # mean with this request 4/3 → bound 2: home still takes it
    assert bounded_load_hash(REPLICAS, even, key) == home
