"""Fixtures for the image smoke tests: build the images (`scripts/images.sh build`, LOCAL_BASE=1
unless IMAGES_LOCAL_BASE=0) and run them with podman (or $IMAGE_RUNNER) like a kubelet would:
UID 1000, read-only root filesystem, a writable /tmp, host network to reach the test servers.

A build failure fails the tests (the build log's tail is in the message); nothing is skipped.
`make images-test` builds first, so the build here finds every layer cached.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("CACHE_DIR", ROOT / ".work" / "images"))
RUNNER = os.environ.get("IMAGE_RUNNER", "podman")
CA = "/etc/ssl/certs/ca-certificates.crt"


def names() -> list[str]:
    return sorted(p.name.removesuffix(".Dockerfile") for p in (ROOT / "images").glob("*.Dockerfile"))


def _script(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/images.sh", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """name -> image reference, every images/*.Dockerfile built."""
    env = {"LOCAL_BASE": os.environ.get("IMAGES_LOCAL_BASE", "1"), "CACHE_DIR": str(CACHE_DIR)}
    if not os.environ.get("PIP_CA") and Path(CA).exists():
        env["PIP_CA"] = CA  # this machine's proxy re-signs HTTPS: pip needs its CA (a build secret)
    proc = _script("build", timeout=7200, **env)
    assert proc.returncode == 0, f"building the images failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    refs = _script("refs").stdout.split()
    assert len(refs) == len(names())
    os.environ["CONTAINERS_CONF"] = str(CACHE_DIR / "containers.conf")  # runc, the rlimits we may set
    return dict(zip(names(), refs))


def run_args(image: str, *args: str, entrypoint: str | None = None, volumes: dict | None = None,
             env: dict | None = None, name: str | None = None, detach: bool = False) -> list[str]:
    """`podman run` as a pod would: UID 1000, read-only root, tmpfs /tmp, host network."""
    cmd = [RUNNER, "run", "--rm", "--network", "host", "--user", "1000:1000", "--read-only",
           "--tmpfs", "/tmp:rw,mode=1777"]
    if detach:
        cmd.append("-d")
    if name:
        cmd += ["--name", name]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    for host, (target, mode) in (volumes or {}).items():
        cmd += ["-v", f"{host}:{target}:{mode}"]
    for k, v in (env or {}).items():
        cmd += ["-e", f"{k}={v}"]
    return [*cmd, image, *args]


def run(image: str, *args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(run_args(image, *args, **kw), capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def container(image: str, *args: str, name: str, **kw):
    """A detached container; its log is printed (pytest shows it on failure), then it is removed."""
    subprocess.run([RUNNER, "rm", "-f", name], capture_output=True)
    proc = subprocess.run(run_args(image, *args, name=name, detach=True, **kw), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    try:
        yield name
    finally:
        logs = subprocess.run([RUNNER, "logs", name], capture_output=True, text=True)
        print(f"--- {name} log ---\n{logs.stdout[-5000:]}{logs.stderr[-5000:]}")
        subprocess.run([RUNNER, "rm", "-f", "-t", "5", name], capture_output=True)


def running(name: str) -> bool:
    out = subprocess.run([RUNNER, "inspect", "--format", "{{.State.Running}}", name], capture_output=True, text=True)
    return out.stdout.strip() == "true"


def wait_http(url: str, timeout: float, name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert running(name), f"container {name} exited before {url} answered"
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=2).close()
            return
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout:.0f} s")


def chown_1000(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 1000, 1000)
    return path
