"""Operator settings from the chart's ConfigMap (mounted file, $MODELYARD_CONFIG)."""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from modelyard.operator.resources import Settings

DEFAULT_PATH = "/etc/modelyard/config.yaml"


def load_settings(path: str | None = None) -> Settings:
    path = path or os.environ.get("MODELYARD_CONFIG", DEFAULT_PATH)
    if path and Path(path).exists():
        return Settings.from_dict(yaml.safe_load(Path(path).read_text()) or {})
    return Settings()
