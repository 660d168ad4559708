"""The planner's one exception type."""
from __future__ import annotations


class PlanError(ValueError):
    """A config or an argument the planner cannot understand.

    The message names the file or field and says what would be valid, e.g.
    ``config.json: missing 'num_hidden_layers'``.
    """
