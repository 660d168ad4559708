"""The one command line: ``modelyard validate | plan | download | convert | serve | up | operator``.

Each subcommand lives in its own module under ``modelyard.commands`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the
parsed args and returning an exit code. Modules are imported lazily where they pull heavy
dependencies (torch, kopf), so ``modelyard validate`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from modelyard import __version__

COMMANDS = ("validate", "plan", "download", "convert", "serve", "up", "operator", "chat")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelyard",
        description="Declarative model deployment: validate, plan, download, convert, serve.",
    )
    parser.add_argument("--version", action="version", version=f"modelyard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"modelyard.commands.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
