"""`modelyard operator` (not implemented yet)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("operator", help="operator (not implemented yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise SystemExit("modelyard operator: not implemented yet")
