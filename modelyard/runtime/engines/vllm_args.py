"""The vLLM command line for a Model: ``build_vllm_args(...)`` turns the spec (precision, GPUs,
max model length, adapters, extra args) into the arguments of
``python -m vllm.entrypoints.openai.api_server``.

It is a pure function apart from reading two small JSON files (the checkpoint's ``config.json``
for its ``quantization_config`` and each adapter's ``adapter_config.json`` for its rank), so the
unit tests read like the command line they expect. Extra engine arguments that contradict the
spec are refused with the spec field to change instead.
"""
from __future__ import annotations

import json
from pathlib import Path

from modelyard.runtime.errors import RuntimeStepError

DTYPES = ("auto", "float32", "float16", "bfloat16")
QUANTIZED = ("fp8", "int8", "int4")
# vLLM's LoRAConfig.max_lora_rank is a Literal of these values.
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
# what each quantized precision must look like in a compressed-tensors config: (type, num_bits)
_SCHEMES = {"int8": ("int", 8), "int4": ("int", 4), "fp8": ("float", 8)}

# Imported by vLLM in each worker process (vllm_cpu_pp.py): the later pipeline stages' buffers on CPU.
CPU_PIPELINE_FIX = "modelyard.runtime.engines.vllm_cpu_pp.PipelineStageBuffers"

# Flags modelyard sets from the spec → the spec field (and CLI flag) a user changes instead.
_OWNED = {
    "--model": "spec.source.uri (modelyard serve --model)",
    "--host": "nothing: modelyard serves on all interfaces and keeps vLLM internal",
    "--port": "spec.serving.port (modelyard serve --port)",
    "--served-model-name": "metadata.name (modelyard serve --served-model-name)",
    "--tensor-parallel-size": "spec.gpus (modelyard serve --gpus)",
    "--pipeline-parallel-size": "spec.gpus and the plan (modelyard serve --gpus)",
    "--max-model-len": "spec.serving.maxModelLen (modelyard serve --max-model-len)",
    "--dtype": "spec.precision (modelyard serve --precision)",
    "--quantization": "spec.precision (quantize with modelyard convert, then serve the result)",
    "--lora-modules": "spec.adapters (modelyard serve --adapter NAME=DIR)",
    "--nnodes": "spec.nodes (modelyard serve --nodes)",
    "--node-rank": "nothing: the rank comes from LWS_WORKER_INDEX",
    "--master-addr": "nothing: the master address comes from LWS_LEADER_ADDRESS",
    "--headless": "nothing: ranks above 0 run headless",
}
_ALIASES = {"-tp": "--tensor-parallel-size", "-pp": "--pipeline-parallel-size", "-q": "--quantization"}
# Flags a user may raise but not lower below what the adapters need.
_AT_LEAST = {"--max-lora-rank": "the largest adapter rank", "--max-loras": "the number of adapters"}


class ServeConfigError(RuntimeStepError):
    """The serving configuration cannot work; the message names the field to change."""

    def __init__(self, message: str, reason: str = "InvalidServingConfig"):
        super().__init__(reason, message)


def lora_rank_for(rank: int) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that holds ``rank``."""
    for allowed in LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ServeConfigError(f"an adapter has LoRA rank {rank}; vLLM serves ranks up to {LORA_RANKS[-1]} "
                           f"(retrain with a smaller r)", reason="AdapterRankTooLarge")


def adapter_rank(adapter_dir: str | Path) -> int:
    """The largest rank in an adapter's ``adapter_config.json`` (``r`` and any ``rank_pattern``)."""
    path = Path(adapter_dir) / "adapter_config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ServeConfigError(f"cannot read {path}: {exc}", reason="InvalidAdapter") from None
    ranks = [cfg.get("r") or 0, *(cfg.get("rank_pattern") or {}).values()]
    return max(int(r) for r in ranks)


def quantization_config(model_dir: str | Path) -> dict | None:
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text()).get("quantization_config")
    except (OSError, json.JSONDecodeError) as exc:
        raise ServeConfigError(f"cannot read {path}: {exc}", reason="InvalidModel") from None


def _check_scheme(precision: str, qc: dict, model_dir) -> None:
    want_type, want_bits = _SCHEMES[precision]
    for name, group in (qc.get("config_groups") or {}).items():
        weights = group.get("weights") or {}
        got = (weights.get("type"), weights.get("num_bits"))
        if None not in got and got != (want_type, want_bits):
            raise ServeConfigError(
                f"spec.precision is {precision}, but {model_dir}/config.json quantization_config group {name} "
                f"has {got[1]}-bit {got[0]} weights: convert it again with modelyard convert --precision "
                f"{precision} or set spec.precision to match", reason="PrecisionMismatch")


def _checkpoint_dtype(model_dir) -> str | None:
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return cfg.get("torch_dtype") or cfg.get("dtype")


def _dtype_args(model_dir, precision: str, gpus: int) -> list[str]:
    # vLLM's CPU "auto" downcasts float32 to bfloat16, whose kernels die with SIGILL on CPUs that
    # advertise AMX/avx512_bf16 without the OS enabling it: on CPU keep a float32 checkpoint float32.
    auto = "float32" if gpus < 1 and _checkpoint_dtype(model_dir) == "float32" else "auto"
    if precision == "auto":
        return ["--dtype", auto]
    if precision in DTYPES:
        return ["--dtype", precision]
    if precision not in QUANTIZED:
        raise ServeConfigError(f"spec.precision {precision!r} is not valid; use one of "
                               f"{', '.join(DTYPES + QUANTIZED)}", reason="InvalidPrecision")
    qc = quantization_config(model_dir)
    if not qc:
        raise ServeConfigError(
            f"spec.precision is {precision}, but {model_dir}/config.json has no quantization_config: "
            f"convert it first (modelyard convert --precision {precision}) and serve the converted folder",
            reason="PrecisionNeedsConversion")
    _check_scheme(precision, qc, model_dir)
    # The quantization itself comes from the checkpoint. vLLM's CPU kernels for it (cpu_gemm_wna16,
    # int8_scaled_mm) take only half/bfloat16 activations, and bfloat16 can SIGILL (above).
    return ["--dtype", "float16" if gpus < 1 else "auto"]


def _parallel_args(gpus: int, plan: dict | None, pipeline_parallel: int,
                   gpu_memory_utilization: float, nodes: int = 1) -> list[str]:
    if gpus < 1 and nodes > 1:
        # CPU across nodes: one pipeline stage per node; no --enforce-eager (vLLM's second stage
        # crashes on intermediate_tensors in eager mode)
        return ["--tensor-parallel-size", "1", "--pipeline-parallel-size", str(nodes),
                "--worker-extension-cls", CPU_PIPELINE_FIX]
    if gpus < 1:
        return ["--tensor-parallel-size", "1", "--enforce-eager"]  # CPU: eager starts ~2x faster
    pp = int((plan or {}).get("pipelineParallelSize") or pipeline_parallel or 1)
    if pp < 1 or gpus % pp:
        raise ServeConfigError(f"spec.gpus={gpus} cannot be split into {pp} pipeline stages; "
                               f"use a multiple of {pp} GPUs", reason="InvalidParallelism")
    if nodes > 1 and (gpus % nodes or (gpus // nodes) % (gpus // pp)):
        raise ServeConfigError(f"spec.gpus={gpus} on {nodes} nodes with {pp} pipeline stages puts a "
                               f"tensor-parallel group across nodes; use a pipeline size that is a "
                               f"multiple of {nodes}", reason="InvalidParallelism")
    out = ["--tensor-parallel-size", str(gpus // pp)]
    if pp > 1:
        out += ["--pipeline-parallel-size", str(pp)]
    return out + ["--gpu-memory-utilization", str(gpu_memory_utilization)]


def _lora_args(adapters: dict[str, str]) -> list[str]:
    if not adapters:
        return []
    rank = lora_rank_for(max(adapter_rank(d) for d in adapters.values()))
    return ["--enable-lora", "--max-loras", str(len(adapters)), "--max-lora-rank", str(rank),
            "--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]


def _split_extra(extra: list[str]) -> list[tuple[str, list[str], list[str]]]:
    """``[(flag, values, raw tokens)]``; ``--a=b`` and ``--a b c`` forms, ``_`` read as ``-``."""
    out: list[tuple[str, list[str], list[str]]] = []
    for tok in extra:
        if tok.startswith("-") and not _is_number(tok):
            flag, eq, value = tok.partition("=")
            flag = _ALIASES.get(flag, "--" + flag.lstrip("-").replace("_", "-"))
            out.append((flag, [value] if eq else [], [tok]))
        elif out:
            out[-1][1].append(tok)
            out[-1][2].append(tok)
        else:
            raise ServeConfigError(f"extra engine argument {tok!r} is not a --flag; spec.serving.args must "
                                   f"start with a flag, e.g. ['--max-num-seqs', '8']", reason="InvalidEngineArgs")
    return out


def _is_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def _values(args: list[str]) -> dict[str, list[str]]:
    return {f: v for f, v, _ in _split_extra(args)}


def _same(a: list[str], b: list[str]) -> bool:
    if len(a) == len(b) == 1 and _is_number(a[0]) and _is_number(b[0]):
        return float(a[0]) == float(b[0])
    return a == b


_ALWAYS_MANAGED = frozenset({"--model", "--host", "--port", "--lora-modules"})


def check_extra_args(ours: list[str], extra: list[str], managed: frozenset = _ALWAYS_MANAGED) -> list[str]:
    """``extra`` without repeats of our own flags; ServeConfigError when one contradicts the spec.

    A spec-owned flag is refused when we set it to another value, or when it is in ``managed``
    (set by modelyard even where it does not appear in ``ours``)."""
    mine = _values(ours)
    kept: list[str] = []
    for flag, values, raw in _split_extra(extra):
        if flag in _OWNED:
            if flag in mine and _same(mine[flag], values):
                continue  # says what the spec says already
            if flag in mine or flag in managed:
                have = " ".join(mine.get(flag, [])) or "(managed by modelyard)"
                raise ServeConfigError(
                    f"extra engine argument {' '.join(raw)} contradicts the spec ({flag} {have}); "
                    f"change {_OWNED[flag]} instead", reason="ConflictingEngineArgs")
        if flag in _AT_LEAST and flag in mine and values and _is_number(values[0]) \
                and float(values[0]) < float(mine[flag][0]):
            raise ServeConfigError(f"extra engine argument {' '.join(raw)} is below {_AT_LEAST[flag]} "
                                   f"({mine[flag][0]}); remove it or raise it", reason="ConflictingEngineArgs")
        kept += raw
    return kept


def build_vllm_args(model_dir: str | Path, *, served_model_name: str, port: int, gpus: int = 0,
                    precision: str = "auto", max_model_len: int | None = None,
                    adapters: dict[str, str] | None = None, extra_args: list[str] | None = None,
                    plan: dict | None = None, gpu_memory_utilization: float = 0.9,
                    pipeline_parallel: int = 1, host: str = "127.0.0.1", nodes: int = 1) -> list[str]:
    """Arguments for vLLM's OpenAI api_server serving ``model_dir`` as the spec says."""
    max_len = max_model_len or (plan or {}).get("maxModelLen")
    args = ["--model", str(model_dir), "--host", host, "--port", str(port),
            "--served-model-name", served_model_name, *_dtype_args(model_dir, precision, gpus)]
    if max_len:
        args += ["--max-model-len", str(int(max_len))]
    args += _parallel_args(gpus, plan, pipeline_parallel, gpu_memory_utilization, nodes)
    args += _lora_args(dict(adapters or {}))
    managed = set(_ALWAYS_MANAGED)
    if precision != "auto":
        managed.add("--quantization")  # the precision (or the checkpoint) decides
    if gpus >= 1 or nodes > 1:
        managed.add("--pipeline-parallel-size")  # from the plan
    if nodes > 1:
        managed |= {"--nnodes", "--node-rank", "--master-addr", "--headless"}
    return args + check_extra_args(args, list(extra_args or []), frozenset(managed))
