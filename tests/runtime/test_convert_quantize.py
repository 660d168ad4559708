"""int8/int4/fp8 through llmcompressor, the accelerate pass-through, GPTQ calibration, LoRA merge."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modelyard.runtime.convert import Request, convert
from modelyard.runtime.convert.provenance import NAME as PROVENANCE
from modelyard.runtime.tiny import make_tiny_llama

PROMPT = "Hello world! The operator"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    import llmcompressor  # noqa: F401  (imported once for the module: its import is the slow part)

    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


def generate(folder: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    ids = tok(PROMPT, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 6
    return out


@pytest.mark.parametrize("precision,scheme,num_bits,kind", [
    ("int8", "W8A8", 8, "int"), ("int4", "W4A16", 4, "int"), ("fp8", "FP8_DYNAMIC", 8, "float"),
])
def test_quantized_checkpoint_carries_config_and_generates(tiny, tmp_path, precision, scheme, num_bits, kind):
    out = tmp_path / precision
    result = convert(Request(input=tiny, output=out, precision=precision))
    assert result["recipe"]["scheme"] == scheme
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"
    weights = qc["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["type"]) == (num_bits, kind)
    assert qc["ignore"] == ["lm_head"]
    assert (out / "tokenizer.json").is_file()
    prov = json.loads((out / PROVENANCE).read_text())
    assert prov["recipe"]["modifier"] == "QuantizationModifier" and "llmcompressor" in prov["tools"]
    generate(out)


def test_accelerate_engine_int4_passes_weights_through(tiny, tmp_path, capsys):
    out = tmp_path / "acc"
    convert(Request(input=tiny, output=out, precision="int4", engine="accelerate"))
    assert "bitsandbytes quantizes at load time" in capsys.readouterr().err
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert (out / "model.safetensors").read_bytes() == (tiny / "model.safetensors").read_bytes()


def test_gptq_with_local_calibration_file(tiny, tmp_path):
    calib = tmp_path / "calib.jsonl"
    calib.write_text("\n".join(json.dumps({"text": f"sample {i}: the operator converts and serves models."}) for i in range(8)))
    out = tmp_path / "gptq"
    result = convert(Request(input=tiny, output=out, precision="int4", calibration=str(calib)))
    assert result["recipe"]["modifier"] == "GPTQModifier" and result["recipe"]["calibrationDataset"] == str(calib)
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "compressed-tensors"
    generate(out)


def test_merge_adapter_equals_base_plus_adapter(tiny, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(str(tiny))
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(str(tmp_path / "adapter"))
    out = tmp_path / "merged"
    convert(Request(input=tiny, output=out, adapters=[str(tmp_path / "adapter")]))
    ids = torch.tensor([[1, 5, 9, 30, 200]])
    with torch.no_grad():
        expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny)), str(tmp_path / "adapter"))(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(str(tiny))(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(str(out))(ids).logits
    assert not torch.allclose(plain, expected, atol=1e-3)  # the adapter changes the outputs
    assert torch.allclose(merged, expected, atol=1e-4)
    assert json.loads((out / PROVENANCE).read_text())["recipe"]["adapters"][0]["sha256"]
