"""Will it fit: memory budgets per engine and the longest context each leaves room for."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from modelyard.planner import memory as M
from modelyard.planner.config import Cfg
from modelyard.planner.kvcache import kv_bytes_per_token
from modelyard.planner.sizes import GiB, format_bytes


@dataclass
class Fit:
    fits: bool
    max_model_len: int
    per_gpu_bytes: int = 0
    host_bytes: int = 0
    kv_tokens: int = 0  # tokens the KV cache can hold with the whole budget
    kv_cache_bytes: int = 0  # KV reserved for max_model_len (vllm-cpu: VLLM_CPU_KVCACHE_SPACE)
    overhead_bytes: int = 0  # activations, CUDA context/graphs, process runtime (per device)
    max_memory: dict[str, str] | None = None
    offload: bool = False
    short_by: int = 0
    problem: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Ask:
    """What the caller asked for, after resolving precision and engine."""

    cfg: Cfg
    weight_bytes: int
    kv_dtype: int
    act_dtype: int
    gpus: int
    gpu_memory: int
    host_memory: int
    cap: int  # requested max_model_len, else the model's max_position_embeddings
    requested: bool
    lora_bytes: int = 0


def choose_len(tokens: int, cap: int, requested: bool) -> tuple[int, bool]:
    """The longest context ≤ cap the budget holds; shrinking only when the user asked for none."""
    if tokens >= cap:
        return cap, True
    floor = cap if requested else min(cap, M.MIN_MODEL_LEN)
    rounded = tokens // M.KV_BLOCK_TOKENS * M.KV_BLOCK_TOKENS
    if not requested and rounded >= floor:
        return rounded, True
    return max(rounded, 0), False


def _needed_len(a: Ask) -> int:
    return a.cap if a.requested else min(a.cap, M.MIN_MODEL_LEN)


def _shrunk(a: Ask, mml: int) -> list[str]:
    if mml < a.cap:
        return [f"maxModelLen reduced from {a.cap} to {mml}: the KV cache for a longer context "
                f"does not fit"]
    return []


def tp_problem(c: Cfg, tp: int) -> str:
    """vLLM shards attention heads: tp must divide them (KV heads: divide or be a multiple)."""
    heads, kv = c.heads, c.kv_heads
    if heads % tp:
        return f"tensor parallel {tp} does not divide the {heads} attention heads"
    if kv % tp and tp % kv:
        return f"tensor parallel {tp} does not divide the {kv} KV heads"
    return ""


def valid_tp(c: Cfg, limit: int = 8) -> list[int]:
    return [g for g in range(1, limit + 1) if not tp_problem(c, g)]


def fit_vllm_gpu(a: Ask) -> Fit:
    c, tp = a.cfg, a.gpus
    usable = int(a.gpu_memory * M.GPU_MEMORY_UTILIZATION)
    weights = math.ceil(a.weight_bytes / tp)
    fixed = (M.NON_TORCH_BYTES + M.CUDA_GRAPH_BYTES + M.vllm_activation_bytes(c, tp, a.act_dtype)
             + math.ceil(a.lora_bytes / tp))
    kv_tok = kv_bytes_per_token(c, a.kv_dtype, "vllm", tp)
    tokens = max(usable - weights - fixed, 0) // kv_tok
    mml, ok = choose_len(tokens, a.cap, a.requested)
    length = mml if ok else _needed_len(a)
    per_gpu = weights + fixed + kv_tok * length
    fit = Fit(ok, mml, per_gpu_bytes=per_gpu, kv_tokens=tokens, kv_cache_bytes=kv_tok * length,
              overhead_bytes=fixed, notes=_shrunk(a, mml) if ok else [])
    bad_tp = tp_problem(c, tp) if tp > 1 else ""
    if bad_tp:
        fit.fits, fit.problem = False, bad_tp + f" (valid GPU counts: {valid_tp(c)})"
    elif not ok:
        fit.short_by = per_gpu - usable
        fit.problem = (f"needs {format_bytes(per_gpu)} per GPU (weights {format_bytes(weights)}, "
                       f"runtime {format_bytes(fixed)}, KV for {length} tokens "
                       f"{format_bytes(kv_tok * length)}); {M.GPU_MEMORY_UTILIZATION:g} × "
                       f"{format_bytes(a.gpu_memory)} = {format_bytes(usable)} usable")
    return fit


def fit_accelerate_gpu(a: Ask) -> Fit:
    c, n = a.cfg, a.gpus
    per_gpu_usable = int(a.gpu_memory * M.ACCELERATE_UTILIZATION) - M.NON_TORCH_BYTES
    total = n * per_gpu_usable
    tok_cost = (kv_bytes_per_token(c, a.kv_dtype, "accelerate")
                + M.activation_bytes_per_token(c, 1, a.act_dtype))
    weights = a.weight_bytes + a.lora_bytes
    mml, ok = choose_len(max(total - weights, 0) // tok_cost, a.cap, a.requested)
    length = mml if ok else _needed_len(a)
    ctx = tok_cost * length
    gpu_weight_room = per_gpu_usable - math.ceil(ctx / n)
    host_usable = int(a.host_memory * M.ACCELERATE_UTILIZATION) - M.CPU_RUNTIME_BYTES["accelerate"]
    max_memory = {str(i): format_bytes(max(gpu_weight_room, 0)) for i in range(n)}
    max_memory["cpu"] = format_bytes(max(host_usable, 0))
    fit = Fit(True, length, kv_tokens=max(total - weights, 0) // tok_cost,
              kv_cache_bytes=kv_bytes_per_token(c, a.kv_dtype, "accelerate") * length,
              overhead_bytes=M.NON_TORCH_BYTES + math.ceil(ctx / n), max_memory=max_memory)
    if ok:
        fit.per_gpu_bytes = math.ceil(weights / n) + math.ceil(ctx / n) + M.NON_TORCH_BYTES
        fit.notes = _shrunk(a, mml)
        return fit
    fit.offload = True
    fit.per_gpu_bytes = per_gpu_usable + M.NON_TORCH_BYTES
    on_cpu = weights - max(gpu_weight_room, 0) * n
    fit.host_bytes = on_cpu + M.CPU_RUNTIME_BYTES["accelerate"]
    if gpu_weight_room <= 0:
        fit.fits, fit.short_by = False, -gpu_weight_room
        fit.problem = (f"activations and KV cache for {length} tokens need "
                       f"{format_bytes(math.ceil(ctx / n))} per GPU, "
                       f"{format_bytes(per_gpu_usable)} usable")
    elif on_cpu > host_usable:
        fit.fits, fit.short_by = False, on_cpu - host_usable
        fit.problem = (f"{format_bytes(on_cpu)} of weights must be offloaded but host memory "
                       f"allows {format_bytes(host_usable)} (the rest would go to disk)")
    else:
        fit.notes = [f"{format_bytes(on_cpu)} of weights offloaded to CPU memory (slow: each "
                     f"forward pass copies them to the GPU)"]
    return fit


def fit_cpu(a: Ask, engine: str) -> Fit:
    c = a.cfg
    budget = int(a.host_memory * M.ACCELERATE_UTILIZATION)
    runtime = M.CPU_RUNTIME_BYTES[engine]
    if engine == "vllm":
        act = M.vllm_activation_bytes(c, 1, a.act_dtype)
        kv_tok = kv_bytes_per_token(c, a.kv_dtype, "vllm")
        room = max(budget - runtime - a.weight_bytes - act - a.lora_bytes, 0) // GiB * GiB
        mml, ok = choose_len(room // kv_tok, a.cap, a.requested)
        length = mml if ok else _needed_len(a)
        kv_space = max(GiB, math.ceil(kv_tok * length / GiB) * GiB)  # VLLM_CPU_KVCACHE_SPACE
        need = a.weight_bytes + a.lora_bytes + act + kv_space + runtime
        fit = Fit(ok, mml, host_bytes=need, kv_tokens=room // kv_tok, kv_cache_bytes=kv_space,
                  overhead_bytes=act + runtime)
    else:
        tok_cost = (kv_bytes_per_token(c, a.kv_dtype, "accelerate")
                    + M.activation_bytes_per_token(c, 1, a.act_dtype))
        room = max(budget - runtime - a.weight_bytes - a.lora_bytes, 0)
        mml, ok = choose_len(room // tok_cost, a.cap, a.requested)
        length = mml if ok else _needed_len(a)
        need = a.weight_bytes + a.lora_bytes + tok_cost * length + runtime
        kv_bytes = kv_bytes_per_token(c, a.kv_dtype, "accelerate") * length
        fit = Fit(ok, mml, host_bytes=need, kv_tokens=room // tok_cost, kv_cache_bytes=kv_bytes,
                  overhead_bytes=runtime + tok_cost * length - kv_bytes)
        weight_room = budget - runtime - (need - a.weight_bytes - runtime)
        fit.max_memory = {"cpu": format_bytes(max(weight_room, 0))}
        fit.offload = not ok and need > budget
    if ok:
        fit.notes = _shrunk(a, mml)
    else:
        fit.short_by = need - budget
        fit.problem = (f"needs {format_bytes(need)} of host memory for {length} tokens of context; "
                       f"{M.ACCELERATE_UTILIZATION:g} × {format_bytes(a.host_memory)} = "
                       f"{format_bytes(budget)} usable")
    return fit


def fit_for(engine: str, a: Ask) -> Fit:
    if a.gpus == 0:
        return fit_cpu(a, engine)
    return fit_vllm_gpu(a) if engine == "vllm" else fit_accelerate_gpu(a)
