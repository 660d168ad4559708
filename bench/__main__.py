"""`make bench`: run every bench/bench_*.py and write docs/benchmarks.md.

Each benchmark module exposes ``run() -> str`` returning a Markdown section (starting with a
``## `` heading) whose numbers are ratios against a baseline measured in the same run.
``python -m bench NAME...`` runs only the named ones (e.g. ``python -m bench operator``) and
keeps the other sections of docs/benchmarks.md as they were.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import importlib
import pkgutil
import platform
import re
import sys
import traceback
from pathlib import Path

import bench

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nWritten by `make bench` (`python -m bench`); each section is replaced when its benchmark runs.\n"


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"(?m)^<!-- bench:(\w+) -->\n", text)
    return {parts[i]: parts[i + 1].rstrip() + "\n" for i in range(1, len(parts) - 1, 2)}


def main(argv: list[str]) -> int:
    names = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    wanted = argv or names
    unknown = set(wanted) - set(names)
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; known: {', '.join(names)}", file=sys.stderr)
        return 2
    results: dict[str, str] = {}
    failed = []
    for name in wanted:
        print(f"== bench {name}", flush=True)
        try:
            body = importlib.import_module(f"bench.bench_{name}").run()
        except Exception:  # a broken benchmark is reported, the others still run
            traceback.print_exc()
            failed.append(name)
            continue
        stamp = f"\n_Measured {_dt.date.today().isoformat()} on {platform.machine()}, {platform.python_version()}, {_cpu_count()} CPUs._\n"
        results[name] = body.rstrip() + "\n" + stamp
        print(body, flush=True)
        _record(name, results[name])
    return 1 if failed else 0


def _record(name: str, section: str) -> None:
    """Replace one section, under a lock: two benchmarks running at once keep both sections."""
    DOC.parent.mkdir(exist_ok=True)
    with open(DOC.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sections = _sections(DOC.read_text()) if DOC.exists() else {}
        sections[name] = section
        DOC.write_text(HEADER + "".join(f"\n<!-- bench:{k} -->\n{v}" for k, v in sorted(sections.items())))


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
