"""Local mode (`modelyard up`): the cluster's steps as child processes on this machine.

download → convert (only when needed) → serve, with the same commands and flags the operator's
Jobs and Deployment run (`modelyard download|convert|serve`); the cache volume becomes
``WORKDIR/cache`` with the same content-addressed layout (``sources/<key>``, ``converted/<key>``),
so a second `up` finds what the first downloaded.

A relative ``file://`` source (``file://./models/x``) is resolved against the current
directory, then the YAML file's directory, then that directory's parent; the first that exists
wins. Ctrl-C (or SIGTERM) stops the running step's whole process group and exits 0.
"""
from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from modelyard.runtime.local_proc import Child, modelyard_command

QUANTIZED = ("fp8", "int8", "int4")
HEALTH_TIMEOUT_S = 1800


class StepFailed(Exception):
    def __init__(self, step: str, reason: str):
        super().__init__(f"step {step} failed: {reason}")
        self.step, self.reason = step, reason


def digest(obj, length: int = 16) -> str:
    """Same content key as the operator's (sha256 of canonical JSON, first 16 hex)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def source_key(uri: str, revision: str | None, include=()) -> str:
    return digest({"uri": uri, "revision": revision or "", "include": sorted(include)})


def resolve_uri(uri: str | None, yaml_path: Path, cwd: Path | None = None) -> str:
    """Absolute ``file:///...`` for a relative ``file://`` URI; other URIs unchanged."""
    if uri is None:
        raise StepFailed("download", "uriFrom.secretKeyRef reads the URI from a Kubernetes Secret, which local mode "
                         "does not have; run `modelyard download --source-env VAR` with the URI in $VAR instead")
    if not uri.startswith("file://") or uri.startswith("file:///"):
        return uri
    rel = uri[len("file://"):]
    bases = [cwd or Path.cwd(), yaml_path.resolve().parent, yaml_path.resolve().parent.parent]
    for base in bases:
        if (base / rel).exists():
            return f"file://{(base / rel).resolve()}"
    tried = ", ".join(str((b / rel).resolve()) for b in bases)
    raise StepFailed("download", f"source {uri}: nothing at {tried}")


@dataclass
class Options:
    yaml_path: Path
    workdir: Path
    port: int
    host: str = "127.0.0.1"


class LocalRun:
    """Runs one Model's steps; ``stop()`` (from a signal handler) ends the current one."""

    def __init__(self, model, opts: Options):
        self.model, self.opts, self.spec = model, opts, model.spec
        self.stopping = threading.Event()
        self.child: Child | None = None
        self.cache = opts.workdir / "cache"
        self.logs = opts.workdir / "logs"

    # -- plumbing ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Safe in a signal handler: flags the run and asks the current step to end (no waiting)."""
        self.stopping.set()
        if self.child:
            self.child.terminate()

    def shutdown(self) -> None:
        """End the current step for good: SIGTERM to its group, SIGKILL after a grace period."""
        self.stopping.set()
        if self.child:
            self.child.stop()

    def _wait(self, child: Child) -> int:
        while True:
            try:
                return child.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                if self.stopping.is_set():
                    child.stop()
                    return child.wait()

    def _start(self, step: str, args: list[str], quiet: bool = False) -> Child:
        if self.stopping.is_set():
            raise KeyboardInterrupt
        self.child = Child(step, modelyard_command() + args, quiet=quiet)
        return self.child

    def _run_step(self, step: str, args: list[str], term: Path) -> dict:
        term.parent.mkdir(parents=True, exist_ok=True)
        term.unlink(missing_ok=True)
        child = self._start(step, args + ["--termination-log", str(term)])
        rc = self._wait(child)
        if self.stopping.is_set():
            raise KeyboardInterrupt
        result = json.loads(term.read_text()) if term.is_file() and term.read_text().strip() else {}
        if rc != 0:
            err = result.get("error") or {}
            reason = f"{err.get('reason', 'Failed')}: {err.get('message')}" if err else (
                f"exit code {rc}; last output:\n    " + "\n    ".join(list(child.tail)[-8:]))
            raise StepFailed(step, reason)
        return result

    # -- steps -------------------------------------------------------------------------------
    def _plan_flags(self) -> list[str]:
        s = self.spec
        flags = ["--plan-precision", s.precision, "--plan-engine", s.engine, "--plan-gpus", str(s.gpus)]
        if s.gpu_memory:
            flags += ["--plan-gpu-memory", s.gpu_memory]
        if s.serving.max_model_len:
            flags += ["--plan-max-model-len", str(s.serving.max_model_len)]
        if s.gpus_per_node:
            flags += ["--plan-gpus-per-node", str(s.gpus_per_node)]
        if s.nodes:
            flags += ["--plan-nodes", str(s.nodes)]
        if not s.planner.enforce:
            flags.append("--no-enforce-plan")
        return flags

    def download(self) -> tuple[Path, dict]:
        src = self.spec.source
        uri = resolve_uri(src.uri, self.opts.yaml_path)
        dest = self.cache / "sources" / source_key(uri, src.revision, src.include)
        args = ["download", "--source", uri, "--dest", str(dest)]
        if src.revision:
            args += ["--revision", src.revision]
        for pattern in src.include:
            args += ["--include", pattern]
        print(f"[download] {uri} -> {dest}", flush=True)
        result = self._run_step("download", args + self._plan_flags(), self.logs / "download.json")
        plan = result.get("plan") or {}
        if plan:
            print(f"[plan] engine {plan.get('engine')}, precision {plan.get('precision')}, "
                  f"maxModelLen {plan.get('maxModelLen')}: {plan.get('reason')}", flush=True)
        return dest, result

    def adapters(self) -> dict[str, Path]:
        out = {}
        for a in self.spec.adapters:
            uri = resolve_uri(a.uri, self.opts.yaml_path)
            dest = self.cache / "sources" / source_key(uri, a.revision)
            args = ["download", "--source", uri, "--dest", str(dest), "--no-plan"]
            if a.revision:
                args += ["--revision", a.revision]
            print(f"[download] adapter {a.name}: {uri} -> {dest}", flush=True)
            self._run_step("download", args, self.logs / f"adapter-{a.name}.json")
            out[a.name] = dest
        return out

    def recipe(self, plan: dict, detected: str | None) -> dict | None:
        """Same rule as the operator: convert for non-safetensors, vLLM quantization, merged adapters."""
        s = self.spec
        fmt = s.format if s.format != "auto" else (detected or "safetensors")
        precision, engine = plan.get("precision") or s.precision, plan.get("engine") or s.engine
        merge = sorted(a.name for a in s.adapters if a.merge)
        quantize = engine == "vllm" and precision in QUANTIZED and not plan.get("preQuantized")
        if fmt == "safetensors" and not quantize and not merge:
            return None
        return {"format": fmt, "precision": precision if quantize else "auto", "engine": engine, "mergeAdapters": merge}

    def convert(self, source: Path, result: dict, adapters: dict[str, Path]) -> Path:
        recipe = self.recipe(result.get("plan") or {}, result.get("format"))
        if recipe is None:
            print("[convert] not needed: the engine loads the downloaded weights as they are", flush=True)
            return source
        out = self.cache / "converted" / digest({"source": str(source), "revision": result.get("resolvedRevision") or "",
                                                 "recipe": recipe})
        args = ["convert", "--input", str(source), "--output", str(out), "--format", recipe["format"],
                "--precision", recipe["precision"], "--engine", recipe["engine"]]
        for name in recipe["mergeAdapters"]:
            args += ["--merge-adapter", str(adapters[name])]
        print(f"[convert] {recipe} -> {out}", flush=True)
        self._run_step("convert", args, self.logs / "convert.json")
        return out

    def serve_args(self, model_dir: Path, plan: dict, adapters: dict[str, Path]) -> list[str]:
        s = self.spec
        engine = plan.get("engine") or (s.engine if s.engine != "auto" else ("vllm" if s.gpus else "accelerate"))
        args = ["serve", "--engine", engine, "--model", str(model_dir), "--host", self.opts.host,
                "--port", str(self.opts.port), "--served-model-name", self.model.name, "--gpus", str(s.gpus),
                "--precision", plan.get("precision") or s.precision]
        if plan.get("maxModelLen") or s.serving.max_model_len:
            args += ["--max-model-len", str(plan.get("maxModelLen") or s.serving.max_model_len)]
        if engine == "accelerate" and plan.get("offload") and plan.get("maxMemory"):
            args += ["--max-memory", json.dumps(plan["maxMemory"], sort_keys=True, separators=(",", ":")),
                     "--offload-folder", str(self.opts.workdir / "offload")]
        if plan.get("perGpuBytes") and s.gpus:
            args += ["--planned-gpu-bytes", str(plan["perGpuBytes"])]
        for a in s.adapters:
            if not a.merge:
                args += ["--adapter", f"{a.name}={adapters[a.name]}"]
        nodes = int(plan.get("nodes") or s.nodes or 1)
        if nodes > 1:
            args += ["--nodes", str(nodes)]
            if s.gpus:
                args += ["--pipeline-parallel-size", str(plan.get("pipelineParallelSize") or nodes)]
        return args + (["--", *s.serving.args] if s.serving.args else [])

    def serve(self, args: list[str]) -> int:
        print(f"[serve] modelyard {shlex.join(args)}", flush=True)
        if "--nodes" in args:  # one process per node, restarted together
            from modelyard.runtime.local_group import serve_group

            return serve_group(self, args, int(args[args.index("--nodes") + 1]))
        child = self._start("serve", args)
        self._wait_healthy(child)
        self._announce()
        rc = self._wait(child)
        if self.stopping.is_set():
            raise KeyboardInterrupt
        raise StepFailed("serve", f"the server exited with code {rc}; last output:\n    " + "\n    ".join(list(child.tail)[-8:]))

    def _wait_healthy(self, child: Child) -> None:
        import httpx

        url, deadline = f"http://127.0.0.1:{self.opts.port}/health", time.monotonic() + HEALTH_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.stopping.is_set():
                raise KeyboardInterrupt
            if child.poll() is not None:
                raise StepFailed("serve", f"the server exited with code {child.poll()} before it was ready; last output:\n    "
                                 + "\n    ".join(list(child.tail)[-8:]))
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            self.stopping.wait(0.25)
        raise StepFailed("serve", f"not healthy after {HEALTH_TIMEOUT_S}s")

    def _announce(self) -> None:
        base = f"http://127.0.0.1:{self.opts.port}/v1"
        body = json.dumps({"model": self.model.name, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32})
        print(f"\nready: {self.model.name} is served at {base}\n\n"
              f"  curl {base}/chat/completions -H 'Content-Type: application/json' \\\n    -d '{body}'\n\n"
              f"metrics: http://127.0.0.1:{self.opts.port}/metrics   (Ctrl-C stops everything)\n", flush=True)

    def run(self) -> int:
        source, result = self.download()
        adapters = self.adapters()
        model_dir = self.convert(source, result, adapters)
        return self.serve(self.serve_args(model_dir, result.get("plan") or {}, adapters))
