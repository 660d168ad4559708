"""Atomic output: build in ``<output>.partial-<pid>``, rename into place only when verified.

An interrupted run leaves at most a partial folder (removed by the next run when its process is
gone), never an ``<output>`` that looks finished.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from modelyard.runtime.errors import ConvertError


def partial_dir(output: Path) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(output)
    partial = output.parent / f"{output.name}.partial-{os.getpid()}"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir()
    return partial


def publish(partial: Path, output: Path) -> None:
    output = Path(output)
    old = None
    if output.exists():
        old = output.parent / f"{output.name}.old-{os.getpid()}"
        os.rename(output, old)
    try:
        os.rename(partial, output)
    except OSError as exc:
        if old is not None:
            os.rename(old, output)
        raise ConvertError("PublishFailed", f"cannot move the converted model into {output}: {exc}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def discard(partial: Path) -> None:
    shutil.rmtree(partial, ignore_errors=True)


def _clean_stale(output: Path) -> None:
    for p in output.parent.glob(f"{output.name}.partial-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def link_or_copy(src: Path, dst: Path) -> None:
    """Hardlink when on the same filesystem (no bytes copied), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
