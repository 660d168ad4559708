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


def test_kept_copy_drops_what_reconcile_never_reads_and_shares_strings():
    import json

    raw = json.dumps({"metadata": {"name": "a-download", "namespace": "ns", "resourceVersion": "3",
                                   "labels": {"app.kubernetes.io/instance": "a"},
                                   "annotations": {"modelyard.io/spec-hash": "abc",
                                                   "kubectl.kubernetes.io/last-applied-configuration": "{...}"},
                                   "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
                      "spec": {"backoffLimit": 3, "template": {"spec": {"containers": []}}},
                      "status": {"conditions": [{"type": "Complete", "status": "True"}]}})
    first, second = json.loads(raw), json.loads(raw.replace('"3"', '"4"'))
    cache = Cache()
    cache.put("Job", first)
    held = cache.get("Job", "ns", "a-download")
    assert "managedFields" not in held["metadata"]
    assert held["metadata"]["annotations"] == {"modelyard.io/spec-hash": "abc"}
    assert held["spec"] == {"backoffLimit": 3}
    assert held["status"] == first["status"] and held["status"] is not first["status"]  # the event's body is let go
    assert "managedFields" in first["metadata"]  # the caller's object is left as it was
    cache.put("Job", second)
    again = cache.get("Job", "ns", "a-download")
    assert again["metadata"]["resourceVersion"] == "4"
    key = next(k for k in again["metadata"]["labels"])
    assert key is next(k for k in held["metadata"]["labels"])  # one string for every object's keys
    assert again["status"]["conditions"][0]["status"] is held["status"]["conditions"][0]["status"]
