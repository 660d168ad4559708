"""Parameter layouts per architecture family, derived from ``config.json`` fields only.

Each builder mirrors the module tree transformers builds for that ``model_type`` (checked
exactly against ``AutoModelForCausalLM.from_config`` on the meta device in
tests/unit/test_planner_params.py). Unknown families are counted as a Llama-style decoder and
the plan says so in ``assumptions``.
"""
from __future__ import annotations

from collections.abc import Callable

from modelyard.planner.config import Cfg
from modelyard.planner.layout import Layout


def _attention(lay: Layout, c: Cfg, layers: int, qkv_bias: bool, o_bias: bool) -> None:
    hidden, heads, kv_heads, head_dim = c.hidden, c.heads, c.kv_heads, c.head_dim
    lay.add("q_proj", layers, hidden, heads * head_dim, qkv_bias)
    lay.add("k_proj", layers, hidden, kv_heads * head_dim, qkv_bias)
    lay.add("v_proj", layers, hidden, kv_heads * head_dim, qkv_bias)
    lay.add("o_proj", layers, heads * head_dim, hidden, o_bias)


def _gated_mlp(lay: Layout, count: int, hidden: int, inter: int, bias: bool = False) -> None:
    lay.add("gate_proj", count, hidden, inter, bias)
    lay.add("up_proj", count, hidden, inter, bias)
    lay.add("down_proj", count, inter, hidden, bias)


def _head(lay: Layout, c: Cfg, tie_default: bool, bias: bool = False) -> None:
    """The output projection: counted once when tied to the input embeddings."""
    if not c.flag("tie_word_embeddings", tie_default):
        lay.lm_head = c.vocab * c.hidden + (c.vocab if bias else 0)


def _decoder(
    c: Cfg, family: str, *, qkv_bias: bool = False, o_bias: bool = False, mlp_bias: bool = False,
    norms: int = 2, qk_norm: bool = False, tie_default: bool = False,
) -> Layout:
    """Llama-style block: RMSNorm (weight only), q/k/v/o attention, gated SiLU MLP."""
    hidden, layers = c.hidden, c.layers
    lay = Layout(family, embedding=c.vocab * hidden)
    _attention(lay, c, layers, qkv_bias, o_bias)
    _gated_mlp(lay, layers, hidden, c.need_int("intermediate_size"), mlp_bias)
    lay.other += layers * norms * hidden + hidden
    if qk_norm:
        lay.other += layers * 2 * c.head_dim
    _head(lay, c, tie_default)
    return lay


def llama(c: Cfg) -> Layout:
    bias = c.flag("attention_bias", False)
    return _decoder(c, "llama", qkv_bias=bias, o_bias=bias, mlp_bias=c.flag("mlp_bias", False))


def mistral(c: Cfg) -> Layout:
    return _decoder(c, "mistral")


def qwen2(c: Cfg) -> Layout:
    return _decoder(c, "qwen2", qkv_bias=True)  # Qwen2: bias on q/k/v, not on o


def qwen3(c: Cfg) -> Layout:
    bias = c.flag("attention_bias", False)
    return _decoder(c, "qwen3", qkv_bias=bias, o_bias=bias, qk_norm=True)


def gemma(c: Cfg) -> Layout:
    return _decoder(c, "gemma", tie_default=True)


def gemma2(c: Cfg) -> Layout:
    bias = c.flag("attention_bias", False)
    return _decoder(c, "gemma2", qkv_bias=bias, o_bias=bias, norms=4, tie_default=True)


def gemma3(c: Cfg) -> Layout:
    bias = c.flag("attention_bias", False)
    return _decoder(c, "gemma3", qkv_bias=bias, o_bias=bias, norms=4, qk_norm=True,
                    tie_default=True)


def phi3(c: Cfg) -> Layout:
    return _decoder(c, "phi3")  # fused qkv_proj / gate_up_proj hold the same weights


def _sparse_layers(c: Cfg, experts: int) -> int:
    """Qwen-MoE: a layer is sparse unless in mlp_only_layers or off the decoder_sparse_step."""
    step = c.int_or("decoder_sparse_step", 1)
    dense_only = set(c.get("mlp_only_layers") or [])
    return sum(
        1 for i in range(c.layers)
        if i not in dense_only and experts > 0 and step > 0 and (i + 1) % step == 0
    )


def _moe(
    c: Cfg, family: str, *, experts: int, expert_inter: int, sparse: int, qkv_bias: bool,
    o_bias: bool = False, qk_norm: bool = False, shared_inter: int = 0,
) -> Layout:
    """Attention on every layer; ``sparse`` layers hold a router + experts, the rest a dense MLP."""
    hidden, layers = c.hidden, c.layers
    lay = Layout(family, embedding=c.vocab * hidden)
    _attention(lay, c, layers, qkv_bias, o_bias)
    _gated_mlp(lay, sparse * experts, hidden, expert_inter)
    lay.other += sparse * experts * hidden  # router (mlp.gate), kept at 16 bits
    if shared_inter:
        _gated_mlp(lay, sparse, hidden, shared_inter)
        lay.other += sparse * hidden  # shared_expert_gate: Linear(hidden, 1)
    if layers - sparse:
        _gated_mlp(lay, layers - sparse, hidden, c.need_int("intermediate_size"))
    lay.other += layers * 2 * hidden + hidden
    if qk_norm:
        lay.other += layers * 2 * c.head_dim
    _head(lay, c, tie_default=False)
    return lay


def mixtral(c: Cfg) -> Layout:
    experts = c.need_int("num_local_experts")
    return _moe(c, "mixtral", experts=experts, expert_inter=c.need_int("intermediate_size"),
                sparse=c.layers, qkv_bias=False)


def qwen2_moe(c: Cfg) -> Layout:
    experts = c.need_int("num_experts")
    return _moe(c, "qwen2_moe", experts=experts, expert_inter=c.need_int("moe_intermediate_size"),
                sparse=_sparse_layers(c, experts), qkv_bias=True,
                shared_inter=c.int_or("shared_expert_intermediate_size", 0))


def qwen3_moe(c: Cfg) -> Layout:
    experts = c.need_int("num_experts")
    bias = c.flag("attention_bias", False)
    return _moe(c, "qwen3_moe", experts=experts, expert_inter=c.need_int("moe_intermediate_size"),
                sparse=_sparse_layers(c, experts), qkv_bias=bias, o_bias=bias, qk_norm=True)


def gpt2(c: Cfg) -> Layout:
    hidden, layers = c.hidden, c.layers
    inner = c.int_or("intermediate_size", 4 * hidden)
    positions = c.need_int("max_position_embeddings")
    lay = Layout("gpt2", embedding=(c.vocab + positions) * hidden)
    lay.add("c_attn", layers, hidden, 3 * hidden, True)
    lay.add("attn.c_proj", layers, hidden, hidden, True)
    lay.add("c_fc", layers, hidden, inner, True)
    lay.add("mlp.c_proj", layers, inner, hidden, True)
    lay.other += layers * 2 * 2 * hidden + 2 * hidden  # ln_1, ln_2 (weight+bias), ln_f
    _head(lay, c, tie_default=True)
    return lay


def gpt_neox(c: Cfg) -> Layout:
    hidden, layers = c.hidden, c.layers
    inter = c.need_int("intermediate_size")
    bias = c.flag("attention_bias", True)
    lay = Layout("gpt_neox", embedding=c.vocab * hidden)
    lay.add("query_key_value", layers, hidden, 3 * hidden, bias)
    lay.add("dense", layers, hidden, hidden, bias)
    lay.add("dense_h_to_4h", layers, hidden, inter, True)
    lay.add("dense_4h_to_h", layers, inter, hidden, True)
    lay.other += layers * 2 * 2 * hidden + 2 * hidden  # two LayerNorms per layer + final
    _head(lay, c, tie_default=False)
    return lay


def falcon(c: Cfg) -> Layout:
    hidden, layers, heads = c.hidden, c.layers, c.heads
    head_dim = hidden // heads
    bias, new_arch = c.flag("bias", False), c.flag("new_decoder_architecture", False)
    if new_arch:
        qkv = (2 * c.kv_heads + heads) * head_dim
    elif c.flag("multi_query", True):
        qkv = hidden + 2 * head_dim
    else:
        qkv = 3 * hidden
    lay = Layout("falcon", embedding=c.vocab * hidden)
    lay.add("query_key_value", layers, hidden, qkv, bias)
    lay.add("dense", layers, hidden, hidden, bias)
    ffn = c.int_or("intermediate_size", 4 * hidden)
    lay.add("dense_h_to_4h", layers, hidden, ffn, bias)
    lay.add("dense_4h_to_h", layers, ffn, hidden, bias)
    if new_arch and c.int_or("num_ln_in_parallel_attn", 2) == 2:
        norms = 2  # ln_attn, ln_mlp
    else:
        norms = 1 if c.flag("parallel_attn", True) else 2
    lay.other += layers * norms * 2 * hidden + 2 * hidden
    _head(lay, c, tie_default=True)
    return lay


def phi(c: Cfg) -> Layout:
    hidden, layers = c.hidden, c.layers
    lay = Layout("phi", embedding=c.vocab * hidden)
    _attention(lay, c, layers, qkv_bias=True, o_bias=True)
    lay.add("fc1", layers, hidden, c.need_int("intermediate_size"), True)
    lay.add("fc2", layers, c.need_int("intermediate_size"), hidden, True)
    lay.other += layers * 2 * hidden + 2 * hidden  # input_layernorm, final_layernorm
    if c.flag("qk_layernorm", False):
        lay.other += layers * 2 * 2 * c.head_dim
    _head(lay, c, tie_default=False, bias=True)
    return lay


FAMILIES: dict[str, Callable[[Cfg], Layout]] = {
    "llama": llama, "granite": llama, "mistral": mistral, "qwen2": qwen2, "qwen3": qwen3,
    "gemma": gemma, "gemma2": gemma2, "gemma3_text": gemma3, "phi3": phi3, "phi": phi,
    "mixtral": mixtral, "qwen2_moe": qwen2_moe, "qwen3_moe": qwen3_moe, "gpt2": gpt2,
    "gpt_neox": gpt_neox, "falcon": falcon,
}
