"""`modelyard operator` flags."""
from __future__ import annotations

import pytest

from modelyard.commands.operator import peering_priority


def test_priority_auto_differs_by_pod_and_is_stable(monkeypatch):
    monkeypatch.setenv("POD_NAME", "modelyard-abc-1")
    first = peering_priority("auto")
    assert first == peering_priority("auto") and first > 0
    monkeypatch.setenv("POD_NAME", "modelyard-abc-2")
    assert peering_priority("auto") != first
    assert peering_priority("7") == 7


def test_priority_rejects_garbage():
    with pytest.raises(SystemExit, match="--priority must be a number or 'auto'"):
        peering_priority("high")


def test_metrics_port_must_be_a_port(capsys):
    from modelyard.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["operator", "--metrics-port", "99999"])
    assert exc.value.code == 2
    assert "--metrics-port" in capsys.readouterr().err
