"""One set of image names: images/*.Dockerfile, `make images` (scripts/images.sh), the operator's
settings and the chart's values agree.

The image list is the Dockerfiles on disk (a new one, e.g. serve-onnxruntime, must appear in the
settings and the chart or these tests fail); every serving engine has a serve-<engine> image.
"""
from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import yaml

from modelyard import __version__
from modelyard.operator.config import load_settings
from modelyard.operator.resources.common import (
    IMAGE_REGISTRY,
    STEP_IMAGES,
    Settings,
    image_key,
    serve_image_key,
)
from modelyard.runtime import engines
from tests.chart.helm import one, render

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modelyard"
DOCKERFILES = sorted(p.name.removesuffix(".Dockerfile") for p in (ROOT / "images").glob("*.Dockerfile"))
STEPS = [name for name in DOCKERFILES if name != "operator"]


def images_sh(*args: str, **env: str) -> list[str]:
    proc = subprocess.run(["bash", "scripts/images.sh", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_one_version_everywhere():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert pyproject == __version__ == chart["appVersion"], (pyproject, __version__, chart["appVersion"])


def test_make_images_builds_one_image_per_dockerfile_with_the_package_version():
    assert "operator" in DOCKERFILES and set(STEP_IMAGES) <= set(DOCKERFILES)
    assert images_sh("list") == DOCKERFILES
    assert images_sh("refs") == [f"{IMAGE_REGISTRY}/{name}:{__version__}" for name in DOCKERFILES]
    # REGISTRY and TAG override every name the same way.
    assert images_sh("refs", REGISTRY="registry.example:5000/ml", TAG="1.2.3") == \
        [f"registry.example:5000/ml/{name}:1.2.3" for name in DOCKERFILES]


def test_operator_settings_name_every_step_image():
    """Each Dockerfile but the operator's is a step image in the operator's default settings."""
    assert sorted(STEP_IMAGES) == STEPS, "STEP_IMAGES (operator/resources/common.py) vs images/*.Dockerfile"
    assert Settings().images == {image_key(n): f"{IMAGE_REGISTRY}/{n}:{__version__}" for n in STEPS}


def test_every_serving_engine_has_its_image():
    for engine in engines.ENGINES:
        assert f"serve-{engine}" in DOCKERFILES, f"engine {engine}: no images/serve-{engine}.Dockerfile"
        assert serve_image_key(engine) in Settings().images


def test_chart_values_name_the_same_images():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == f"{IMAGE_REGISTRY}/operator"
    steps = values["config"]["images"]
    assert sorted(steps) == sorted(image_key(n) for n in STEPS), "config.images in values.yaml"
    for name in STEPS:
        entry = steps[image_key(name)]
        assert entry["repository"] == f"{IMAGE_REGISTRY}/{name}", name
        assert entry["tag"] == "", f"{name}: an empty tag follows the chart's appVersion (= the package version)"


def test_rendered_chart_gives_the_operator_the_default_images(tmp_path):
    objs = render()
    config = tmp_path / "config.yaml"
    config.write_text(one(objs, "ConfigMap", "-config")["data"]["config.yaml"])
    assert load_settings(str(config)).images == Settings().images
    operator = one(objs, "Deployment", "")["spec"]["template"]["spec"]["containers"][0]
    assert operator["image"] == f"{IMAGE_REGISTRY}/operator:{__version__}"


def test_every_dockerfile_declares_its_family_and_labels():
    for name in DOCKERFILES:
        text = (ROOT / "images" / f"{name}.Dockerfile").read_text()
        assert re.search(r"^# family: (python|torch|vllm)$", text, flags=re.M), f"{name}: no '# family:' line"
        for label in ("source", "version", "revision"):
            assert re.search(rf'org\.opencontainers\.image\.{label}="\$\{{{label.upper()}\}}"', text), f"{name}: {label} label"
        # pip's CA only when the build secret is given; never copied into a layer.
        assert "--mount=type=secret,id=cacert" in text and 'if [ -s /run/secrets/cacert ]' in text, name
        assert not re.search(r"^(COPY|ADD)\b.*(\.pem|\.crt|cacert)", text, flags=re.M), name
