"""The onnxruntime engine in the plan: when ``engine: auto`` picks it, how it quantizes, and its
memory (weights + a KV cache the static batching Engine allocates up front for every slot).

onnxruntime-genai's static batching Engine (CPU, and CUDA without paged attention) shares one
past/present buffer of ``max_batch × max_length`` tokens per layer (``past_present_share_buffer``),
allocated when the batch starts: so the KV cost is ``ORT_MAX_BATCH × kv_bytes_per_token ×
maxModelLen``, and the plan shortens ``maxModelLen`` when that does not fit. The export's
activations are float32 on CPU (the builder's io dtype), float16 on CUDA.
"""
from __future__ import annotations

from modelyard.planner import memory as M
from modelyard.planner.config import Cfg
from modelyard.planner.fit import Ask, Fit, _needed_len, _shrunk, choose_len
from modelyard.planner.kvcache import kv_bytes_per_token
from modelyard.planner.precision import Quant
from modelyard.planner.sizes import GiB, format_bytes

ENGINE = "onnxruntime"
# Requests generating together (the serve engine's default max-batch).
ORT_MAX_BATCH = 8
# Architectures the onnxruntime-genai 0.18 model builder exports as text decoders
# (onnxruntime_genai/models/builder.py create_model), kept to the ones with a plain config.
ARCHITECTURES = frozenset({
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
    "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "PhiForCausalLM",
    "Phi3ForCausalLM", "GraniteForCausalLM", "OlmoForCausalLM", "NemotronForCausalLM",
    "SmolLM3ForCausalLM", "InternLM2ForCausalLM", "Ernie4_5ForCausalLM",
})
# The builder's int4/int8 export: MatMulNBits, blocks of 32 input columns, a float32 scale and a
# packed zero point per block (builder defaults: int4_block_size=32, asymmetric RTN).
SCHEMES = {
    "int4": Quant("int4", "onnxruntime MatMulNBits int4", 4, "group", 4, group_size=32, zero_point_bytes=0.5),
    "int8": Quant("int8", "onnxruntime MatMulNBits int8", 8, "group", 4, group_size=32, zero_point_bytes=1),
}
# An onnxruntime-genai server process (Python, tokenizer, FastAPI, ORT arenas) without torch.
RUNTIME_BYTES = GiB // 2


def auto_picks(gpus: int, architecture: str | None, requested_precision: str, served_adapters: bool) -> str | None:
    """Why ``engine: auto`` picks onnxruntime here, or None when it does not."""
    if gpus or served_adapters or requested_precision not in ("auto", "float32"):
        return None
    if architecture not in ARCHITECTURES:
        return None
    return (f"engine auto chose onnxruntime: a CPU plan (gpus 0) for {architecture}, which the onnxruntime-genai "
            "builder exports; ONNX Runtime serves it faster and in less memory than accelerate on CPU")


def precision_for(requested: str, gpus: int) -> str:
    """auto → float32 on CPU (its CPU kernels are float32), float16 on CUDA."""
    if requested != "auto":
        return requested
    return "float16" if gpus else "float32"


def fit(a: Ask, c: Cfg) -> Fit:
    device = a.gpu_memory if a.gpus else a.host_memory
    utilization = M.GPU_MEMORY_UTILIZATION if a.gpus else M.ACCELERATE_UTILIZATION
    budget = int(device * utilization)
    runtime = RUNTIME_BYTES + (M.NON_TORCH_BYTES if a.gpus else 0)
    act_bytes = 2 if a.gpus else 4
    kv_tok = kv_bytes_per_token(c, act_bytes, ENGINE) * ORT_MAX_BATCH
    tok_cost = kv_tok + M.activation_bytes_per_token(c, 1, act_bytes)
    room = max(budget - runtime - a.weight_bytes, 0)
    mml, ok = choose_len(room // tok_cost, a.cap, a.requested)
    length = mml if ok else _needed_len(a)
    need = a.weight_bytes + runtime + tok_cost * length
    out = Fit(ok, mml, kv_tokens=room // tok_cost, kv_cache_bytes=kv_tok * length,
              overhead_bytes=runtime + (tok_cost - kv_tok) * length)
    if a.gpus:
        out.per_gpu_bytes = need
    else:
        out.host_bytes = need
    if ok:
        out.notes = _shrunk(a, mml) + [f"KV cache for {ORT_MAX_BATCH} requests × {mml} tokens, allocated up front "
                                       "(onnxruntime-genai static batching)"]
    else:
        out.short_by = need - budget
        where = "GPU" if a.gpus else "host"
        out.problem = (f"needs {format_bytes(need)} of {where} memory for {ORT_MAX_BATCH} requests × {length} tokens "
                       f"of context; {utilization:g} × {format_bytes(device)} = {format_bytes(budget)} usable")
    return out
