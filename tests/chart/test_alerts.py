"""The chart's alert rules: `promtool check rules` accepts them and `promtool test rules`
(alerts_test.yaml: input series and the alerts they must and must not raise) passes."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.chart.helm import CHART, alert_rules, render, run, tool

HERE = Path(__file__).resolve().parent
ALL_ON = [CHART / "ci" / "all-integrations-values.yaml"]


@pytest.fixture
def rules_dir(tmp_path):
    """rules.yaml (the PrometheusRule spec with default thresholds) beside alerts_test.yaml."""
    rules = alert_rules(render([], ("monitoring.prometheusRule.enabled=true",)))
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(HERE / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    return tmp_path


def test_promtool_check_rules(rules_dir):
    proc = run(tool("promtool"), "check", "rules", str(rules_dir / "rules.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 6 rules found" in proc.stdout + proc.stderr


def test_promtool_test_rules(rules_dir):
    proc = run(tool("promtool"), "test", "rules", "alerts_test.yaml", cwd=rules_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_every_alert_has_a_promtool_test():
    rules = alert_rules(render(ALL_ON))
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    cases = yaml.safe_load((HERE / "alerts_test.yaml").read_text())["tests"]
    fired = {t["alertname"] for case in cases for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert alerts == fired, f"alerts without a firing test: {alerts - fired}"


def test_promtool_test_fails_when_a_threshold_moves(rules_dir):
    """The tests are real: with a 30s latency threshold the slow model must no longer alert."""
    rules = alert_rules(render([], ("monitoring.prometheusRule.enabled=true",
                                    "monitoring.prometheusRule.thresholds.p95LatencySeconds=30")))
    (rules_dir / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    proc = run(tool("promtool"), "test", "rules", "alerts_test.yaml", cwd=rules_dir)
    assert proc.returncode != 0
    assert "ModelyardHighLatency" in proc.stdout + proc.stderr
