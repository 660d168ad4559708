"""Atomic output: build in ``<output>.partial-<owner>``, rename into place only when verified.

``<owner>`` is the pod's UID (``runtime/lease.owner_id``), so two convert pods never share a
folder (the PID is 1 in every pod). ``partial_dir`` is called under the output's lease: the
partial folders of other owners belong to runs that lost or never held it (killed), so they go.
An interrupted run leaves at most a partial folder, never an ``<output>`` that looks finished.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from modelyard.runtime.errors import ConvertError
from modelyard.runtime.lease import owner_id


def partial_dir(output: Path) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.parent / f"{output.name}.partial-{owner_id()}"
    _clean_stale(output, partial)
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir()
    return partial


def publish(partial: Path, output: Path) -> None:
    output = Path(output)
    old = None
    if output.exists():
        old = output.parent / f"{output.name}.old-{owner_id()}"
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


def _clean_stale(output: Path, mine: Path) -> None:
    """Under the output's lease nobody else writes here: other owners' partial folders are orphans."""
    for p in output.parent.glob(f"{output.name}.partial-*"):
        if p != mine:
            shutil.rmtree(p, ignore_errors=True)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hardlink when on the same filesystem (no bytes copied), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
