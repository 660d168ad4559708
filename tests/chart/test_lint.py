"""`helm lint --strict` passes with the default values and with every file in the chart's ci/."""
from __future__ import annotations

import re

import pytest

from tests.chart.helm import CHART, CI_VALUES, VALUE_SETS, run, tool


@pytest.mark.parametrize("values", [v for _, v in VALUE_SETS], ids=[i for i, _ in VALUE_SETS])
def test_helm_lint_strict(values):
    cmd = [tool("helm"), "lint", "--strict", str(CHART)]
    for v in values:
        cmd += ["-f", str(v)]
    proc = run(*cmd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_ci_values_exist():
    assert {p.stem for p in CI_VALUES} >= {"all-integrations-values", "namespaced-values", "two-replicas-values"}


def test_schema_rejects_a_typo_with_the_field_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("monitoring:\n  podMonitor:\n    enabeld: true\n")
    proc = run(tool("helm"), "lint", "--strict", str(CHART), "-f", str(bad))
    assert proc.returncode != 0
    assert "enabeld" in proc.stdout + proc.stderr


def test_schema_rejects_a_bad_threshold(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("monitoring:\n  prometheusRule:\n    thresholds:\n      gpuMemoryRatio: 95\n")
    proc = run(tool("helm"), "template", "x", str(CHART), "-f", str(bad))
    assert proc.returncode != 0
    assert "gpuMemoryRatio" in proc.stderr


# Map values documented as a whole: their default contents are examples, not separate values.
WHOLE = {"resources", "podSecurityContext", "securityContext", "profiles", "labels"}


def test_every_value_has_a_comment():
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    missing = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        stack = [(n, k) for n, k in stack if n < indent]
        documented_whole = any(k in WHOLE for _, k in stack)
        stack.append((indent, key))
        prev = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        if not documented_whole and not prev.startswith("#"):
            missing.append(f"line {i + 1}: {key}")
    assert not missing, f"values without a comment: {missing}"
