"""Entry point for parameter layouts: pick the family builder for a config."""
from __future__ import annotations

from modelyard.planner.config import Cfg
from modelyard.planner.deepseek import deepseek
from modelyard.planner.families import FAMILIES, llama
from modelyard.planner.layout import Layout

ALL_FAMILIES = {**FAMILIES, "deepseek_v2": deepseek, "deepseek_v3": deepseek}


def layout_for(c: Cfg) -> tuple[Layout, list[str]]:
    """The model's Layout and any assumption made on the way (unknown family)."""
    builder = ALL_FAMILIES.get(c.model_type)
    if builder is not None:
        return builder(c), []
    name = c.model_type or "(no model_type)"
    lay = llama(c)
    lay.family = c.model_type or "unknown"
    return lay, [
        f"model_type {name!r} is not one the planner knows; counted it as a Llama-style decoder "
        f"(q/k/v/o attention, gated MLP, RMSNorm) — check against the checkpoint's size"
    ]
