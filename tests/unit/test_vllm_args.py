"""build_vllm_args: the vLLM command line each Model spec turns into."""
from __future__ import annotations

import json

import pytest

from modelyard.runtime.engines.vllm_args import ServeConfigError, build_vllm_args, lora_rank_for

W8A8 = {"quant_method": "compressed-tensors", "format": "int-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "int"},
                                      "input_activations": {"num_bits": 8, "type": "int"}}}}


@pytest.fixture
def model(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 256}))
    return d


@pytest.fixture
def quantized(tmp_path):
    d = tmp_path / "w8a8"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": W8A8}))
    return d


def adapter(tmp_path, name, r, rank_pattern=None):
    d = tmp_path / name
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "rank_pattern": rank_pattern or {},
                                                       "target_modules": ["q_proj"]}))
    return str(d)


def build(model_dir, **kw):
    kw.setdefault("served_model_name", "llama")
    kw.setdefault("port", 8100)
    kw.setdefault("gpus", 0)
    kw.setdefault("precision", "auto")
    kw.setdefault("max_model_len", None)
    kw.setdefault("adapters", {})
    kw.setdefault("extra_args", [])
    kw.setdefault("plan", None)
    return build_vllm_args(model_dir, **kw)


def test_cpu_model_runs_eager_on_one_device(model):
    assert build(model, max_model_len=512) == [
        "--model", str(model), "--host", "127.0.0.1", "--port", "8100", "--served-model-name", "llama",
        "--dtype", "auto", "--max-model-len", "512", "--tensor-parallel-size", "1", "--enforce-eager"]


def test_gpus_become_tensor_parallel_with_memory_utilization(model):
    args = build(model, gpus=4, precision="bfloat16", gpu_memory_utilization=0.85)
    assert args[args.index("--dtype") + 1] == "bfloat16"
    assert args[-4:] == ["--tensor-parallel-size", "4", "--gpu-memory-utilization", "0.85"]
    assert "--enforce-eager" not in args and "--max-model-len" not in args


def test_plan_asks_for_pipeline_parallel_and_gives_max_model_len(model):
    args = build(model, gpus=4, plan={"pipelineParallelSize": 2, "maxModelLen": 8192})
    assert args[args.index("--max-model-len") + 1] == "8192"
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args[args.index("--pipeline-parallel-size") + 1] == "2"


def test_spec_max_model_len_wins_over_the_plan(model):
    args = build(model, max_model_len=1024, plan={"maxModelLen": 8192})
    assert args[args.index("--max-model-len") + 1] == "1024"


def test_gpus_not_divisible_by_pipeline_stages_is_refused(model):
    with pytest.raises(ServeConfigError, match="spec.gpus=3 cannot be split into 2 pipeline stages"):
        build(model, gpus=3, pipeline_parallel=2)


def test_adapters_enable_lora_with_rank_rounded_up(tmp_path, model):
    adapters = {"sql": adapter(tmp_path, "sql", 8), "chat": adapter(tmp_path, "chat", 4, {"q_proj": 24})}
    args = build(model, adapters=adapters)
    i = args.index("--enable-lora")
    assert args[i:] == ["--enable-lora", "--max-loras", "2", "--max-lora-rank", "32",
                        "--lora-modules", f"sql={adapters['sql']}", f"chat={adapters['chat']}"]


@pytest.mark.parametrize("rank,allowed", [(1, 8), (8, 8), (9, 16), (300, 320), (512, 512)])
def test_lora_rank_rounds_to_vllm_values(rank, allowed):
    assert lora_rank_for(rank) == allowed


def test_lora_rank_beyond_vllm_limit_is_refused():
    with pytest.raises(ServeConfigError, match="rank 1024; vLLM serves ranks up to 512"):
        lora_rank_for(1024)


def test_quantized_precision_takes_quantization_from_the_checkpoint(quantized):
    args = build(quantized, precision="int8", gpus=1)
    assert args[args.index("--dtype") + 1] == "auto"
    assert "--quantization" not in args


def test_quantized_checkpoint_on_cpu_runs_half_activations(quantized):
    args = build(quantized, precision="int8")
    assert args[args.index("--dtype") + 1] == "float16"


def test_quantized_precision_without_quantization_config_says_convert_first(model):
    with pytest.raises(ServeConfigError, match="no quantization_config: convert it first") as exc:
        build(model, precision="int4")
    assert exc.value.reason == "PrecisionNeedsConversion"


def test_quantized_checkpoint_of_another_precision_is_refused(quantized):
    with pytest.raises(ServeConfigError, match="spec.precision is int4, but .* has 8-bit int weights"):
        build(quantized, precision="int4")


def test_unknown_precision_names_the_valid_ones(model):
    with pytest.raises(ServeConfigError, match="auto, float32, float16, bfloat16, fp8, int8, int4"):
        build(model, precision="int3")


def test_extra_args_are_appended(model):
    args = build(model, extra_args=["--max-num-seqs", "8", "--disable-log-stats"])
    assert args[-3:] == ["--max-num-seqs", "8", "--disable-log-stats"]


def test_extra_args_repeating_the_spec_are_dropped(model):
    args = build(model, max_model_len=512, extra_args=["--max-model-len=512", "--dtype", "auto", "-tp", "1"])
    assert args.count("--max-model-len") == 1 and args.count("--dtype") == 1
    assert "-tp" not in args


@pytest.mark.parametrize("extra,field", [
    (["--tensor-parallel-size", "2"], "spec.gpus"),
    (["-tp=2"], "spec.gpus"),
    (["--served-model-name", "other"], "metadata.name"),
    (["--max_model_len", "4096"], "spec.serving.maxModelLen"),
    (["--dtype", "float16"], "spec.precision"),
    (["--model", "/elsewhere"], "spec.source.uri"),
    (["--port", "9000"], "spec.serving.port"),
    (["--lora-modules", "x=/y"], "spec.adapters"),
])
def test_extra_args_contradicting_the_spec_name_the_field(model, extra, field):
    with pytest.raises(ServeConfigError, match=f"contradicts the spec.*change {field}") as exc:
        build(model, max_model_len=512, extra_args=extra)
    assert exc.value.reason == "ConflictingEngineArgs"


def test_quantization_flag_is_refused_when_precision_is_set(quantized, model):
    with pytest.raises(ServeConfigError, match="spec.precision"):
        build(quantized, precision="int8", extra_args=["--quantization", "fp8"])
    assert build(model, extra_args=["-q", "fp8"])[-2:] == ["-q", "fp8"]


def test_max_model_len_in_extra_args_is_fine_when_the_spec_leaves_it_open(model):
    assert build(model, extra_args=["--max-model-len", "4096"])[-2:] == ["--max-model-len", "4096"]


def test_lora_rank_may_be_raised_for_hot_loaded_adapters_but_not_lowered(tmp_path, model):
    adapters = {"sql": adapter(tmp_path, "sql", 16)}
    assert build(model, adapters=adapters, extra_args=["--max-lora-rank", "64"])[-2:] == ["--max-lora-rank", "64"]
    with pytest.raises(ServeConfigError, match="below the largest adapter rank"):
        build(model, adapters=adapters, extra_args=["--max-lora-rank", "8"])


def test_extra_args_must_start_with_a_flag(model):
    with pytest.raises(ServeConfigError, match="'8' is not a --flag"):
        build(model, extra_args=["8"])


def test_float32_checkpoint_on_cpu_stays_float32(tmp_path):
    d = tmp_path / "f32"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "dtype": "float32"}))
    assert build(d)[build(d).index("--dtype") + 1] == "float32"
    assert build(d, gpus=1)[build(d, gpus=1).index("--dtype") + 1] == "auto"


def test_hot_loading_rank_follows_the_command_line():
    from modelyard.runtime.engines.vllm import _max_rank

    assert _max_rank(["--enable-lora", "--max-lora-rank", "16", "--max-lora-rank=64"]) == 64
    assert _max_rank(["--enable-lora"]) == 16  # vLLM's default
    assert _max_rank(["--dtype", "auto"]) is None  # LoRA off: hot-loading is refused with a reason


@pytest.mark.parametrize("specs,message", [
    (["sql"], "expected NAME=DIR"),
    (["sql=/a", "sql=/b"], "'sql' is given twice"),
])
def test_adapter_flags_are_checked(specs, message):
    from modelyard.runtime.adapters import AdapterError
    from modelyard.runtime.engines.vllm import parse_adapters

    with pytest.raises(AdapterError, match=message):
        parse_adapters(specs)
    assert parse_adapters(["sql=/m/sql", "chat = /m/chat"]) == {"sql": "/m/sql", "chat": "/m/chat"}


@pytest.mark.parametrize("extra, field", [(["--trust-remote-code"], "spec.serving.trustRemoteCode"),
                                          (["--trust_remote_code"], "spec.serving.trustRemoteCode"),
                                          (["--api-key", "sk-x"], "spec.serving.auth.secretRef")])
def test_extra_args_cannot_smuggle_remote_code_or_keys(model, extra, field):
    with pytest.raises(ServeConfigError, match=field):
        build_vllm_args(model, served_model_name="m", port=8000, extra_args=extra)


def test_trust_remote_code_only_from_the_spec(model):
    assert "--trust-remote-code" not in build_vllm_args(model, served_model_name="m", port=8000)
    args = build_vllm_args(model, served_model_name="m", port=8000, trust_remote_code=True,
                           extra_args=["--trust-remote-code"])  # saying what the spec says is fine
    assert args.count("--trust-remote-code") == 1
