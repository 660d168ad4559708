"""The operator's watch-fed cache: newest wins, our own writes' echoes are not news."""
from __future__ import annotations

from modelyard.operator.cache import Cache


def obj(name, rv, **labels):
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": str(rv), "labels": labels}}


def test_newer_wins_and_echoes_are_not_news():
    cache = Cache()
    assert cache.put("Job", obj("a", 5)) is True          # our create's response
    assert cache.put("Job", obj("a", 5)) is False         # its watch event: nothing new, no reconcile
    assert cache.put("Job", obj("a", 4)) is False         # an older event never overwrites
    assert cache.get("Job", "ns", "a")["metadata"]["resourceVersion"] == "5"
    assert cache.put("Job", obj("a", 9)) is True          # the Job controller's status update
    assert cache.get("Job", "ns", "a")["metadata"]["resourceVersion"] == "9"


def test_deleted_objects_do_not_come_back_from_late_events():
    cache = Cache()
    cache.put("Job", obj("a", 5))
    cache.forget("Job", obj("a", 7))
    assert cache.get("Job", "ns", "a") is None
    assert cache.put("Job", obj("a", 6)) is False         # a MODIFIED that raced the DELETED
    assert cache.put("Job", obj("a", 8)) is True          # a new Job of the same name


def test_list_by_namespace_and_labels():
    cache = Cache()
    cache.put("Pod", obj("p1", 1, app="x", role="server"))
    cache.put("Pod", obj("p2", 2, app="x", role="download"))
    assert [p["metadata"]["name"] for p in cache.list("Pod", "ns", {"role": "server"})] == ["p1"]
    assert cache.list("Pod", "other", {}) == []
