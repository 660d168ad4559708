"""Helpers for the chart tests: find the pinned tools, render the chart, load schemas.

Tools are looked up on PATH first (``make test`` puts .tools/bin there), then in .tools/bin.
A missing tool is a test FAILURE with the command that installs it, never a skip.
"""
from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modelyard"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
SCHEMAS = Path(__file__).resolve().parent / "schemas"
RELEASE, NAMESPACE = "my", "modelyard-system"

# (id, values files) rendered by the tests: default, every integration, namespaced watch, 2 replicas.
VALUE_SETS = [("default", [])] + [(p.stem.removesuffix("-values"), [p]) for p in CI_VALUES]


def tool(name: str) -> str:
    found = shutil.which(name) or (ROOT / ".tools" / "bin" / name)
    if not Path(found).exists():
        raise AssertionError(f"{name} not found on PATH or in .tools/bin: run `make tools`")
    return str(found)


def run(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


@functools.lru_cache(maxsize=None)
def _render_text(values: tuple[str, ...], sets: tuple[str, ...]) -> str:
    cmd = [tool("helm"), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--include-crds"]
    for v in values:
        cmd += ["-f", v]
    for s in sets:
        cmd += ["--set", s]
    proc = run(*cmd)
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return proc.stdout


def render(values: list[Path] | tuple = (), sets: tuple[str, ...] = ()) -> list[dict]:
    """All objects `helm template` renders (CRDs included) for these values files."""
    text = _render_text(tuple(str(v) for v in values), tuple(sets))
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict], kind: str, name_suffix: str = "") -> dict:
    found = [o for o in by_kind(objs, kind) if o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


@functools.lru_cache(maxsize=None)
def schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.json").read_text())


def crd_schema(path: Path, kind: str) -> dict:
    """openAPIV3Schema of the served version of ``kind`` in a CRD file (may hold several CRDs)."""
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc["spec"]["names"]["kind"] == kind:
            version = next(v for v in doc["spec"]["versions"] if v.get("served"))
            return version["schema"]["openAPIV3Schema"]
    raise AssertionError(f"no CRD for {kind} in {path}")


def alert_rules(objs: list[dict]) -> dict:
    """The PrometheusRule's spec as a plain Prometheus rules file."""
    return {"groups": one(objs, "PrometheusRule")["spec"]["groups"]}
