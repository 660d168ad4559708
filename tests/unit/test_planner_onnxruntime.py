"""The planner and the onnxruntime engine: weights by export precision, the up-front KV cache of
static batching, a context shortened to fit, and the engine's CPU-only auto choice."""
from __future__ import annotations

from modelyard.planner import plan
from modelyard.planner.onnxruntime import ORT_MAX_BATCH
from modelyard.planner.sizes import GiB
from tests.unit.test_planner_fit import LLAMA


def test_float32_weights_and_kv_for_every_batch_slot():
    p = plan(LLAMA, engine="onnxruntime", max_model_len=4096, memory="128Gi")
    assert p.fits
    assert (p.precision, p.quantization) == ("float32", None)
    assert p.weight_bytes == p.parameters * 4
    kv_tok = 2 * 32 * 8 * 128 * 4  # float32 KV on CPU
    assert p.kv_cache_bytes == ORT_MAX_BATCH * kv_tok * 4096
    assert p.host_bytes > p.weight_bytes + p.kv_cache_bytes
    assert any("allocated up front" in a for a in p.assumptions)


def test_int4_export_is_about_a_quarter_of_bf16_linears():
    p = plan(LLAMA, engine="onnxruntime", precision="int4")
    assert p.quantization == "onnxruntime MatMulNBits int4"
    bf16 = plan(LLAMA, engine="accelerate", precision="bfloat16").weight_bytes
    assert 0.25 * bf16 < p.weight_bytes < 0.45 * bf16


def test_context_shrinks_to_what_the_kv_buffer_allows():
    p = plan(LLAMA, engine="onnxruntime", memory="96Gi")
    assert p.fits and p.max_model_len < 131072  # 8 slots × 128k tokens of float32 KV would not fit
    assert p.host_bytes <= 0.9 * 96 * GiB
    tight = plan(LLAMA, engine="onnxruntime", memory="32Gi")
    assert not tight.fits and "8 requests" in tight.reason


def test_gpu_plan_uses_float16_and_one_gpu():
    p = plan(LLAMA, engine="onnxruntime", gpus=1, gpu_memory="80GiB")
    assert p.precision == "float16" and p.per_gpu_bytes > p.weight_bytes and p.tensor_parallel_size == 1
