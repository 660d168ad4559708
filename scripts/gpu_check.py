"""`make gpu-check`: what only a GPU can prove, in one command (minutes), written to docs/gpu-check.md.

1. (CPU) A small real-size model made locally, no network: random weights with the architecture
   config of Qwen2-0.5B (~0.5 B parameters, bfloat16), and a tokenizer trained offline.
2. (first GPU step) A GPU must be visible to the serving environment (``nvidia-smi`` answers and
   torch there counts CUDA devices; ``CUDA_VISIBLE_DEVICES=""`` hides them). Without one the
   script says so and exits 3, having written nothing to docs/.
3. NVML gauges (modelyard's ``gpu_memory()``) vs ``nvidia-smi``, per GPU.
4. Planned vs measured VRAM (within 10%) for ``modelyard serve`` on accelerate (bfloat16,
   bitsandbytes int8 and int4) and on vLLM (bfloat16, and fp8 / W8A8 / W4A16 checkpoints made by
   ``modelyard convert``); measured = the GPU memory ``nvidia-smi`` shows while the server is up,
   minus what it showed before. Every server answers one completion.
5. Tensor parallel 2 on vLLM when two GPUs are visible.

    python scripts/gpu_check.py [--work DIR] [--python PY] [--model-config NAME|FILE] [--out FILE]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NEEDS_GPU = 3
TOLERANCE = 0.10
CONFIGS = ROOT / "tests" / "fixtures" / "configs"
# The smallest tokenizer-independent settings of a real architecture: a test passes "tiny" to
# prove the CPU part quickly; the check itself uses qwen2-0.5b (a real-size model).
TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
        "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 2, "vocab_size": 1024, "max_position_embeddings": 512}


def say(msg: str) -> None:
    print(f"gpu-check: {msg}", flush=True)


def make_model(out: Path, config_name: str) -> Path:
    """Random weights for a real architecture config, saved as bfloat16 safetensors with a tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from modelyard.runtime.tiny import make_tokenizer

    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    if config_name == "tiny":
        raw = dict(TINY)
    else:
        path = Path(config_name) if Path(config_name).is_file() else CONFIGS / f"{config_name}.json"
        raw = json.loads(path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(out, vocab_size=min(1024, raw["vocab_size"]))
    raw.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
               initializer_range=0.15)
    config = AutoConfig.for_model(raw.pop("model_type"), **{k: v for k, v in raw.items()
                                                            if k not in ("transformers_version", "torch_dtype")})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(str(out))
    say(f"made {config.architectures[0]} with {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B "
        f"parameters at {out}")
    return out


def smi(*query: str) -> list[list[str]]:
    """``nvidia-smi --query-gpu=... --format=csv,noheader,nounits`` as rows of fields."""
    out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(query)}", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return [[f.strip() for f in line.split(",")] for line in out.strip().splitlines()]


def visible_gpus(python: str) -> tuple[int, str]:
    """(number of GPUs the serving environment sees, why none when 0)."""
    if shutil.which("nvidia-smi") is None:
        return 0, "nvidia-smi is not on PATH (no NVIDIA driver on this machine)"
    if not Path(python).exists():
        return 0, f"{python} is missing: build the GPU serving environment with `make gpu-env`"
    try:
        smi("name")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        return 0, f"nvidia-smi fails: {err}"
    probe = subprocess.run([python, "-c", "import torch; print(torch.cuda.device_count())"],
                           capture_output=True, text=True, timeout=120)
    count = int(probe.stdout.strip() or 0) if probe.returncode == 0 else 0
    if count == 0:
        return 0, (f"torch in {python} sees no CUDA device (CUDA_VISIBLE_DEVICES="
                   f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}; a CPU-only torch build?)")
    return count, ""


def used_mib() -> list[float]:
    return [float(row[0]) for row in smi("memory.used")]


def check_nvml() -> list[dict]:
    """NVML through modelyard's gauges vs nvidia-smi, per GPU (MiB)."""
    from modelyard.runtime import gpu

    gpu.reset()
    ours = {g.index: g for g in gpu.gpu_memory()}
    rows = []
    for index, (name, used, total) in enumerate(smi("name", "memory.used", "memory.total")):
        g = ours.get(index)
        ok = g is not None and abs(g.total_bytes / 2**20 - float(total)) <= 1 \
            and abs(g.used_bytes / 2**20 - float(used)) <= 64
        rows.append({"gpu": index, "name": name, "smi_used": float(used), "smi_total": float(total),
                     "nvml_used": g.used_bytes / 2**20 if g else None,
                     "nvml_total": g.total_bytes / 2**20 if g else None, "ok": ok})
    return rows


def plan_for(model: Path, engine: str, precision: str, gpus: int, max_len: int):
    from modelyard.planner import plan

    total = float(smi("memory.total")[0][0]) * 2**20
    return plan(json.loads((model / "config.json").read_text()), engine=engine, precision=precision,
                gpus=gpus, gpu_memory=int(total), max_model_len=max_len)


def serve(python: str, model: Path, engine: str, precision: str, gpus: int, port: int, log: Path,
          extra: list[str]) -> subprocess.Popen:
    cmd = [python, "-m", "modelyard.cli", "serve", "--engine", engine, "--model", str(model),
           "--served-model-name", "check", "--gpus", str(gpus), "--precision", precision,
           "--host", "127.0.0.1", "--port", str(port), *extra]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_and_complete(proc: subprocess.Popen, port: int, log: Path, timeout: float = 900) -> str:
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(1)
    else:
        raise RuntimeError(f"server not healthy in {timeout:.0f}s:\n{log.read_text()[-3000:]}")
    r = httpx.post(f"{url}/v1/completions", timeout=120, json={
        "model": "check", "prompt": "The operator downloads", "max_tokens": 8, "temperature": 0})
    r.raise_for_status()
    return r.json()["choices"][0]["text"]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def measure(args, case: dict) -> dict:
    """Serve one case; planned vs measured VRAM per GPU (MiB)."""
    p = plan_for(case["model"], case["engine"], case["precision"], case["gpus"], args.max_model_len)
    extra = ["--planned-gpu-bytes", str(p.per_gpu_bytes), "--max-model-len", str(args.max_model_len)]
    if case["engine"] == "vllm":  # size the KV cache as planned instead of 90% of the GPU
        extra += ["--", "--kv-cache-memory-bytes", str(p.kv_cache_bytes)]
    before = used_mib()
    log = args.work / f"serve-{case['name']}.log"
    proc = serve(args.python, case["model"], case["engine"], case["precision"], case["gpus"], args.port, log, extra)
    try:
        text = wait_and_complete(proc, args.port, log)
        after = used_mib()
    finally:
        stop(proc)
    measured = max(a - b for a, b in zip(after, before))
    planned = p.per_gpu_bytes / 2**20
    return {**{k: v for k, v in case.items() if k != "model"}, "planned": planned, "measured": measured,
            "error": (measured - planned) / planned, "ok": abs(measured - planned) <= TOLERANCE * planned,
            "answer": text}


def converted(args, model: Path, precision: str) -> Path:
    """An fp8 / W8A8 / W4A16 checkpoint of ``model`` made by ``modelyard convert`` (llmcompressor)."""
    out = args.work / f"model-{precision}"
    if not (out / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "modelyard.cli", "convert", "--input", str(model), "--output",
                        str(out), "--precision", precision, "--engine", "vllm"], check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    return out


def cases(args, model: Path, gpus: int) -> list[dict]:
    out = [{"name": f"accelerate-{p}", "engine": "accelerate", "precision": p, "gpus": 1, "model": model}
           for p in ("bfloat16", "int8", "int4")]
    out.append({"name": "vllm-bfloat16", "engine": "vllm", "precision": "bfloat16", "gpus": 1, "model": model})
    for precision, scheme in (("fp8", "FP8_DYNAMIC"), ("int8", "W8A8"), ("int4", "W4A16")):
        out.append({"name": f"vllm-{scheme}", "engine": "vllm", "precision": precision, "gpus": 1,
                    "model": converted(args, model, precision)})
    if gpus >= 2:
        out.append({"name": "vllm-bfloat16-tp2", "engine": "vllm", "precision": "bfloat16", "gpus": 2,
                    "model": model})
    return out


def report(nvml: list[dict], results: list[dict], model: Path) -> str:
    name, driver = smi("name", "driver_version")[0]
    lines = [f"# GPU check ({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
             f"Written by `make gpu-check` on {len(nvml)} × **{name}** (driver {driver}); model: "
             f"`{json.loads((model / 'config.json').read_text())['architectures'][0]}` from "
             "tests/fixtures/configs/qwen2-0.5b.json with random weights. Every figure below was "
             "measured in that run.", "", "## NVML gauges vs nvidia-smi (MiB)", "",
             "| GPU | name | nvidia-smi used | NVML used | nvidia-smi total | NVML total | ok |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    lines += [f"| {r['gpu']} | {r['name']} | {r['smi_used']:.0f} | {r['nvml_used'] or 0:.0f} | "
              f"{r['smi_total']:.0f} | {r['nvml_total'] or 0:.0f} | {'yes' if r['ok'] else '**no**'} |" for r in nvml]
    lines += ["", f"## Planned vs measured VRAM per GPU (MiB; within {TOLERANCE:.0%} passes)", "",
              "| case | engine | precision | GPUs | planned | measured | error | ok | answered |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['name']} | {r['engine']} | {r['precision']} | {r['gpus']} | – | – | – | "
                         f"**failed**: {r['skipped'][:120]} | no |")
            continue
        lines.append(f"| {r['name']} | {r['engine']} | {r['precision']} | {r['gpus']} | {r['planned']:.0f} | "
                     f"{r['measured']:.0f} | {r['error']:+.1%} | {'yes' if r['ok'] else '**no**'} | "
                     f"{'yes' if r['answer'] else 'empty'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / ".work" / "gpu-check")
    ap.add_argument("--python", default=str(ROOT / ".venv-gpu" / "bin" / "python"),
                    help="python of the serving environment (CUDA torch, vllm, bitsandbytes)")
    ap.add_argument("--model-config", default="qwen2-0.5b", help="tests/fixtures/configs name, a file, or tiny")
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "gpu-check.md")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    model = make_model(args.work / "model", args.model_config)
    gpus, why = visible_gpus(args.python)
    if gpus == 0:
        say(f"this check needs an NVIDIA GPU and none is visible: {why}. Run `make gpu-check` on a GPU "
            f"machine; nothing was measured and {args.out.name} was not written.")
        return NEEDS_GPU
    say(f"{gpus} GPU(s): {', '.join(r[0] for r in smi('name'))}")
    nvml = check_nvml()
    results = []
    for case in cases(args, model, gpus):
        say(f"serving {case['name']} ...")
        try:
            results.append(measure(args, case))
        except Exception as err:  # one failing case is a row in the report, not the end of the check
            results.append({**{k: v for k, v in case.items() if k != "model"}, "skipped": str(err)})
        say(json.dumps({k: v for k, v in results[-1].items() if k != "answer"}, default=str)[:400])
    args.out.write_text(report(nvml, results, model))
    failed = [r["name"] for r in results if not r.get("ok")] + [f"nvml-{r['gpu']}" for r in nvml if not r["ok"]]
    say(f"wrote {args.out}; {'all passed' if not failed else 'FAILED: ' + ', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
