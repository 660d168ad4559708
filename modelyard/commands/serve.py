"""`modelyard serve` (not implemented yet)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve (not implemented yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise SystemExit("modelyard serve: not implemented yet")
