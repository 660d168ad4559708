"""The planner: will this model fit, and how should it be loaded?

Pure functions over ``config.json`` (+ ``model.safetensors.index.json``): no I/O, no torch.
See docs/planner.md for the formulae, the constants and their sources.
"""
from modelyard.planner.errors import PlanError
from modelyard.planner.plan import plan
from modelyard.planner.result import Plan
from modelyard.planner.sizes import PROFILES, format_bytes, parse_bytes

__all__ = ["PROFILES", "Plan", "PlanError", "format_bytes", "parse_bytes", "plan"]
