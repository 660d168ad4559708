"""DeepSeek-V2/V3: multi-head latent attention (MLA) and fine-grained MoE with shared experts."""
from __future__ import annotations

from modelyard.planner.config import Cfg
from modelyard.planner.families import _gated_mlp, _head
from modelyard.planner.layout import Layout


def _mla(lay: Layout, c: Cfg, layers: int) -> None:
    hidden, heads = c.hidden, c.heads
    nope, rope = c.need_int("qk_nope_head_dim"), c.need_int("qk_rope_head_dim")
    v_dim, kv_rank = c.need_int("v_head_dim"), c.need_int("kv_lora_rank")
    q_rank = c.get("q_lora_rank")
    bias = c.flag("attention_bias", False)
    if q_rank:
        lay.add("q_a_proj", layers, hidden, q_rank, bias)
        lay.other += layers * q_rank  # q_a_layernorm
        lay.add("q_b_proj", layers, q_rank, heads * (nope + rope))
    else:
        lay.add("q_proj", layers, hidden, heads * (nope + rope))
    lay.add("kv_a_proj_with_mqa", layers, hidden, kv_rank + rope, bias)
    lay.other += layers * kv_rank  # kv_a_layernorm
    lay.add("kv_b_proj", layers, kv_rank, heads * (nope + v_dim))
    lay.add("o_proj", layers, heads * v_dim, hidden, bias)


def deepseek(c: Cfg) -> Layout:
    """Layers below ``first_k_dense_replace`` are dense; the rest hold routed + shared experts.

    The multi-token-prediction layers of DeepSeek-V3 (``num_nextn_predict_layers``) are not
    built by transformers and not counted (vLLM loads them only for speculative decoding).
    """
    hidden, layers = c.hidden, c.layers
    lay = Layout(c.model_type or "deepseek_v3", embedding=c.vocab * hidden)
    _mla(lay, c, layers)
    experts = c.need_int("n_routed_experts")
    sparse = max(0, layers - c.int_or("first_k_dense_replace", 0)) if experts else 0
    mlp_bias = c.flag("mlp_bias", False)
    _gated_mlp(lay, sparse * experts, hidden, c.need_int("moe_intermediate_size"))
    lay.other += sparse * experts * hidden  # router weight (e_score_correction_bias is a buffer)
    shared = c.int_or("n_shared_experts", 0) * c.need_int("moe_intermediate_size")
    if shared and sparse:
        _gated_mlp(lay, sparse, hidden, shared, mlp_bias)
    _gated_mlp(lay, layers - sparse, hidden, c.need_int("intermediate_size"), mlp_bias)
    lay.other += layers * 2 * hidden + hidden
    _head(lay, c, tie_default=False)
    return lay
