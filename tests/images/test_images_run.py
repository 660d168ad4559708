"""Every built image: the user it runs as, its OCI labels, and nothing left behind by the build."""
from __future__ import annotations

import json
import subprocess

import pytest

from modelyard import __version__
from tests.images.conftest import RUNNER, names, run

# The first test also waits for the `images` fixture: a build after a code change can take
# longer than the suite-wide 600 s here (`make images-test` builds first, so it is cached then).
pytestmark = pytest.mark.timeout(3600)

SHELL_CHECK = (
    "id -u; id -g; "
    "for t in gcc cc g++ make git; do command -v $t && echo BUILD-TOOL:$t; done; "
    "ls -d /root/.cache/pip /tmp/.cache/pip /opt/modelyard/bin/pip 2>/dev/null | sed 's/^/LEFTOVER:/'; "
    "touch /usr/x 2>/dev/null && echo ROOT-WRITABLE; true"
)


@pytest.mark.parametrize("name", names())
def test_image_is_non_root_labelled_and_clean(images, name):
    inspect = json.loads(subprocess.run([RUNNER, "image", "inspect", images[name]], capture_output=True,
                                        text=True, check=True).stdout)[0]
    config = inspect.get("Config") or {}
    assert config.get("User") == "1000:1000", f"{name} runs as {config.get('User')!r}"
    labels = config.get("Labels") or {}
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.source"].startswith("https://")
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert labels["org.opencontainers.image.revision"].removesuffix("-dirty") == head
    out = run(images[name], "-c", SHELL_CHECK, entrypoint="sh")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[:2] == ["1000", "1000"]
    assert not [line for line in lines if line.startswith(("BUILD-TOOL:", "LEFTOVER:", "ROOT-WRITABLE"))], out.stdout


@pytest.mark.parametrize("name", names())
def test_entrypoint_answers_help(images, name):
    out = run(images[name], "--help")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("usage: modelyard "), out.stdout[:500]
