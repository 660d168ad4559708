"""dashboards/modelyard.json is a well-formed Grafana dashboard (no Grafana here: its queries are
proven against a real Prometheus in tests/observability)."""
from __future__ import annotations

import json

from tests.chart.helm import CHART

DASHBOARD = json.loads((CHART / "dashboards" / "modelyard.json").read_text())


def test_panels_have_unique_ids_and_do_not_overlap():
    panels = DASHBOARD["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells = {}
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def test_every_panel_queries_the_selected_datasource_with_unique_ref_ids():
    for p in (p for p in DASHBOARD["panels"] if p["type"] != "row"):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and p["description"] and p["fieldConfig"]["defaults"]["unit"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and t["expr"].strip(), p["title"]


def test_rate_windows_follow_grafana_and_selectors_follow_the_variables():
    for p in (p for p in DASHBOARD["panels"] if p["type"] != "row"):
        for t in p["targets"]:
            expr = t["expr"]
            if "rate(" in expr:
                assert "[$__rate_interval]" in expr, f"{p['title']}: use $__rate_interval"
            if "modelyard_operator_models" not in expr and "modelyard_operator_" in expr and "namespace" in expr:
                assert 'namespace=~"$namespace"' in expr, p["title"]


def test_dashboard_has_a_stable_uid_and_the_documented_rows():
    assert DASHBOARD["uid"] == "modelyard" and DASHBOARD["schemaVersion"] >= 36
    rows = [p["title"] for p in DASHBOARD["panels"] if p["type"] == "row"]
    assert rows == ["Serving", "GPU memory", "Lifecycle", "Operator", "Gateway"]
    titles = {p["title"] for p in DASHBOARD["panels"]}
    assert {"GPU memory: used vs planned", "Time to first token", "End-to-end latency", "Tokens per second",
            "Requests in flight and queued", "KV-cache usage (vLLM)", "Time in download / convert / load",
            "Models by phase", "Gateway: in flight and held", "Gateway: queue wait p95", "Replicas: desired vs ready",
            "Cold starts"} <= titles
