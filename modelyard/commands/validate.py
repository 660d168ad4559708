"""`modelyard validate -f FILE`: check a Model offline with the rules the API server applies."""
from __future__ import annotations

import sys

from modelyard.api import ValidationError, load_model


def register(sub) -> None:
    p = sub.add_parser("validate", help="validate a Model file offline (exit 0 when valid)")
    p.add_argument("-f", "--filename", required=True, help="Model YAML file ('-' for stdin)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when valid")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        model = load_model(args.filename)
    except FileNotFoundError:
        print(f"{args.filename}: no such file", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"{args.filename} is not a valid Model:", file=sys.stderr)
        for path, msg in exc.issues:
            print(f"  {path or '(document)'}: {msg}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"{args.filename}: Model {model.name!r} is valid")
    return 0
