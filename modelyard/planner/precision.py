"""Precision and quantization: what the weights cost in bytes at the target precision."""
from __future__ import annotations

from dataclasses import dataclass

from modelyard.planner.config import Cfg
from modelyard.planner.errors import PlanError
from modelyard.planner.layout import Layout

PRECISIONS = ("auto", "float32", "float16", "bfloat16", "fp8", "int8", "int4")
FLOAT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
QUANTIZED = ("fp8", "int8", "int4")
_DTYPE_NAMES = {"float32": "float32", "float": "float32", "fp32": "float32",
                "float16": "float16", "half": "float16", "fp16": "float16",
                "bfloat16": "bfloat16", "bf16": "bfloat16"}
UNQUANTIZED_BYTES = 2  # embeddings, norms, routers, lm_head stay 16-bit under every scheme


@dataclass(frozen=True)
class Quant:
    """A weight quantization scheme and its metadata cost.

    ``granularity``: "channel" (one scale per output row), "group" (one per ``group_size``
    input columns of a row), "block" (one per ``block`` 2-D tile) or "tensor".
    """

    precision: str  # fp8 | int8 | int4
    label: str  # what the plan reports: "compressed-tensors W4A16", "bitsandbytes-8bit", ...
    bits: int
    granularity: str
    scale_bytes: float
    group_size: int = 0
    block: tuple[int, int] = (0, 0)
    zero_point_bytes: float = 0.0  # per scale, when the scheme is asymmetric
    g_idx: bool = False  # GPTQ act-order keeps an int32 group index per input column
    prequantized: bool = False

    def weight_bytes(self, lay: Layout) -> int:
        packed = lay.linear_weights * self.bits // 8
        if self.granularity == "group":
            scales = lay.groups(self.group_size)
        elif self.granularity == "block":
            scales = lay.blocks(*self.block)
        elif self.granularity == "channel":
            scales = lay.output_channels()
        else:
            scales = len(lay.linears)
        meta = scales * (self.scale_bytes + self.zero_point_bytes)
        if self.g_idx:
            meta += 4 * sum(l.count * l.fan_in for l in lay.linears)
        return int(packed + meta) + lay.unquantized * UNQUANTIZED_BYTES


# What modelyard's convert step (llmcompressor, compressed-tensors) produces for vLLM. Scales
# take the weight's dtype (compressed_tensors/quantization/lifecycle/initialize.py:
# ``scale_dtype = observed_dtype``): 2 bytes. The W4A16 and W8A8 presets are symmetric: no
# zero points are stored.
VLLM_SCHEMES = {
    "int8": Quant("int8", "compressed-tensors W8A8", 8, "channel", 2),
    "int4": Quant("int4", "compressed-tensors W4A16", 4, "group", 2, group_size=128),
    "fp8": Quant("fp8", "compressed-tensors FP8_DYNAMIC", 8, "channel", 2),
}
# bitsandbytes at load time (accelerate engine). LLM.int8 keeps one float32 scale per row
# (``SCB``); NF4/FP4 keep one float32 absmax per 64-weight block (bnb ``blocksize=64``,
# double quantization off: transformers' BitsAndBytesConfig default).
ACCELERATE_SCHEMES = {
    "int8": Quant("int8", "bitsandbytes-8bit", 8, "channel", 4),
    "int4": Quant("int4", "bitsandbytes-4bit", 4, "group", 4, group_size=64),
}


def checkpoint_dtype(c: Cfg) -> str | None:
    raw = c.data.get("torch_dtype") or c.data.get("dtype")
    return _DTYPE_NAMES.get(str(raw).lower()) if raw else None


def _compressed_tensors(q: dict) -> Quant:
    groups = q.get("config_groups") or {}
    first = next(iter(groups.values()), {}) if isinstance(groups, dict) else {}
    w = first.get("weights") or {}
    bits, kind = int(w.get("num_bits", 8)), w.get("type", "int")
    acts = first.get("input_activations") or {}
    precision = "fp8" if kind == "float" else ("int4" if bits <= 4 else "int8")
    label = "compressed-tensors " + ("FP8" if kind == "float" else f"W{bits}A{acts.get('num_bits', 16)}")
    strategy = w.get("strategy", "channel")
    zp = 0.0 if w.get("symmetric", True) else bits / 8
    if strategy == "group":
        return Quant(precision, label, bits, "group", 2, group_size=int(w.get("group_size") or 128),
                     zero_point_bytes=zp, prequantized=True)
    if strategy == "block":
        rows, cols = w.get("block_structure") or [128, 128]
        return Quant(precision, label, bits, "block", 2, block=(rows, cols), zero_point_bytes=zp,
                     prequantized=True)
    return Quant(precision, label, bits, "tensor" if strategy == "tensor" else "channel", 2,
                 zero_point_bytes=zp, prequantized=True)


def checkpoint_quant(c: Cfg) -> Quant | None:
    """The scheme of a pre-quantized checkpoint (``quantization_config``), or None."""
    q = c.data.get("quantization_config")
    if not q:
        return None
    method = str(q.get("quant_method", "")).lower()
    if method == "compressed-tensors":
        return _compressed_tensors(q)
    if method in ("gptq", "awq"):
        bits = int(q.get("bits") or q.get("w_bit") or 4)
        group = int(q.get("group_size") or q.get("q_group_size") or 128)
        precision = "int4" if bits <= 4 else "int8"
        # fp16 scales + packed zero points per group; GPTQ adds g_idx (int32 per input column).
        return Quant(precision, f"{method} {bits}-bit", bits,
                     "group" if group > 0 else "channel", 2, group_size=max(group, 0),
                     zero_point_bytes=bits / 8, g_idx=method == "gptq", prequantized=True)
    if method == "fp8":
        block = q.get("weight_block_size")
        if block:  # DeepSeek-V3: float32 scale per 128x128 tile
            return Quant("fp8", f"fp8 block {block[0]}x{block[1]}", 8, "block", 4,
                         block=(int(block[0]), int(block[1])), prequantized=True)
        return Quant("fp8", "fp8", 8, "tensor", 4, prequantized=True)
    if method == "bitsandbytes":
        if q.get("load_in_4bit"):
            return Quant("int4", "bitsandbytes-4bit", 4, "group", 4, group_size=64, prequantized=True)
        return Quant("int8", "bitsandbytes-8bit", 8, "channel", 4, prequantized=True)
    raise PlanError(
        f"{c.source}: quantization_config.quant_method {method!r} is not one the planner knows "
        f"(compressed-tensors, gptq, awq, fp8, bitsandbytes)"
    )


def resolve_precision(requested: str, c: Cfg) -> tuple[str, Quant | None, list[str]]:
    """The precision the plan uses, the checkpoint's own quantization if any, and assumptions."""
    if requested not in PRECISIONS:
        raise PlanError(f"precision: {requested!r} is not one of {', '.join(PRECISIONS)}")
    pre = checkpoint_quant(c)
    if pre is not None:
        if requested not in ("auto", pre.precision):
            raise PlanError(
                f"precision: the checkpoint is already quantized ({pre.label}); "
                f"use precision auto or {pre.precision}"
            )
        return pre.precision, pre, []
    if requested != "auto":
        return requested, None, []
    dtype = checkpoint_dtype(c)
    if dtype:
        return dtype, None, []
    return "bfloat16", None, ["precision auto: config.json names no torch_dtype; assumed bfloat16"]


def scheme_for(precision: str, engine: str, pre: Quant | None) -> Quant | None:
    """The quantization applied for ``precision`` on ``engine`` (None for float precisions)."""
    if pre is not None or precision not in QUANTIZED:
        return pre
    table = VLLM_SCHEMES if engine == "vllm" else ACCELERATE_SCHEMES
    if precision not in table:
        raise PlanError(
            f"precision: {precision} is served by vLLM only (engine vllm on a GPU); "
            f"with engine accelerate use int8, int4 or bfloat16"
        )
    return table[precision]


def weight_bytes(lay: Layout, precision: str, quant: Quant | None) -> int:
    if quant is not None:
        return quant.weight_bytes(lay)
    return lay.parameters * FLOAT_BYTES[precision]


def kv_dtype_bytes(precision: str) -> int:
    """vLLM ``kv_cache_dtype=auto`` follows the activation dtype: 4 for float32, else 2."""
    return 4 if precision == "float32" else 2
