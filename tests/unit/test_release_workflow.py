"""The release workflow (.github/workflows/release.yaml) cannot run here; it is checked offline:
actionlint (expressions, job graph, action inputs) and SchemaStore's github-workflow schema
(vendored by check-jsonschema), and it builds exactly the images `make images` builds."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "release.yaml"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = shutil.which(name) or BIN / name
    assert Path(found).exists(), f"{name} missing: pip install -c requirements/constraints.txt -e '.[dev]'"
    return str(found)


def test_actionlint_passes():
    proc = subprocess.run([_tool("actionlint"), "-no-color", str(WORKFLOW)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_matches_the_github_workflow_schema():
    proc = subprocess.run([_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_builds_every_image_multi_arch_and_pushes_the_chart_on_a_tag():
    flow = yaml.safe_load(WORKFLOW.read_text())
    assert flow[True]["push"]["tags"] == ["v*.*.*"]  # YAML 1.1 reads the key `on` as True
    matrix = json.loads(subprocess.run(["bash", "scripts/images.sh", "matrix"], cwd=ROOT, capture_output=True,
                                       text=True, check=True).stdout)
    names = sorted(p.name.removesuffix(".Dockerfile") for p in (ROOT / "images").glob("*.Dockerfile"))
    assert [m["name"] for m in matrix] == names
    assert all("linux/arm64" in m["platforms"] for m in matrix if m["family"] != "vllm")
    steps = flow["jobs"]["images"]["steps"]
    build = next(s for s in steps if s.get("uses", "").startswith("docker/build-push-action"))
    assert build["with"]["file"] == "images/${{ matrix.image.name }}.Dockerfile"
    assert build["with"]["platforms"] == "${{ matrix.image.platforms }}" and build["with"]["push"] is True
    assert {"VERSION", "REVISION", "SOURCE"} <= {line.split("=")[0] for line in build["with"]["build-args"].split()}
    chart = " ".join(s.get("run", "") for s in flow["jobs"]["chart"]["steps"])
    assert "helm package charts/modelyard" in chart and 'helm push' in chart and "oci://" in chart
