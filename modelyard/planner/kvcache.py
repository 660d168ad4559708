"""KV-cache bytes per token of context.

Standard attention: 2 (K and V) × layers × KV heads × head_dim × dtype bytes, with an explicit
``head_dim`` honoured (Gemma: 256). Under tensor parallelism vLLM keeps
``max(1, kv_heads // tp)`` heads per GPU (KV heads are replicated when tp > kv_heads).

MLA (DeepSeek-V2/V3): vLLM caches the compressed latent, one vector of
``kv_lora_rank + qk_rope_head_dim`` per layer per token, replicated on every GPU;
transformers caches decompressed K (nope+rope) and V per head.

Sliding window (Mistral v0.1, Gemma 2's local layers): counted as full attention on every layer
— conservative; vLLM's hybrid KV-cache manager may fit more tokens than planned.
"""
from __future__ import annotations

from modelyard.planner.config import Cfg

MLA_FAMILIES = ("deepseek_v2", "deepseek_v3")


def is_mla(c: Cfg) -> bool:
    return c.model_type in MLA_FAMILIES and c.get("kv_lora_rank") is not None


def kv_bytes_per_token(c: Cfg, dtype_bytes: int, engine: str, tp: int = 1) -> int:
    """Bytes of KV cache per token; per GPU when ``tp`` > 1 (vLLM), whole model when tp == 1."""
    layers = c.layers
    if is_mla(c):
        if engine == "vllm":
            return layers * (c.need_int("kv_lora_rank") + c.need_int("qk_rope_head_dim")) * dtype_bytes
        k_dim = c.need_int("qk_nope_head_dim") + c.need_int("qk_rope_head_dim")
        return layers * c.heads * (k_dim + c.need_int("v_head_dim")) * dtype_bytes
    kv_heads = c.kv_heads
    if tp > 1:
        kv_heads = max(1, kv_heads // tp)
    return 2 * layers * kv_heads * c.head_dim * dtype_bytes


def sliding_window_note(c: Cfg) -> list[str]:
    window = c.get("sliding_window")
    if not window or c.data.get("use_sliding_window") is False:
        return []
    mpe = c.get("max_position_embeddings")
    if isinstance(mpe, int) and window >= mpe:
        return []
    return [f"sliding_window={window}: KV cache counted for the full context on every layer "
            f"(conservative; vLLM may hold more tokens)"]
