"""validate_adapter: real peft adapters checked against real tiny base models (no server)."""
from __future__ import annotations

import json
import shutil

import pytest

from modelyard.runtime.adapters import AdapterError, validate_adapter
from modelyard.runtime.tiny import make_tiny_llama


def make_adapter(base, out, seed=1, r=8, targets=("q_proj", "v_proj")):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    get_peft_model(model, LoraConfig(init_lora_weights=False, r=r, target_modules=list(targets))).save_pretrained(str(out))
    return out


def edit_config(adapter, **changes):
    path = adapter / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    base = make_tiny_llama(root / "base")
    other = make_tiny_llama(root / "other", hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                            intermediate_size=256)
    bin_only = root / "bin-only"
    bin_only.mkdir()
    import torch
    from safetensors.torch import load_file

    shutil.copy(base / "config.json", bin_only / "config.json")
    torch.save(load_file(str(base / "model.safetensors")), bin_only / "pytorch_model.bin")
    return {"base": base, "other": other, "bin_only": bin_only,
            "good": make_adapter(base, root / "good", r=8),
            "r16": make_adapter(base, root / "r16", r=16),
            "small": make_adapter(other, root / "small"), "root": root}


def copy_of(models, key, name):
    dst = models["root"] / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(models[key], dst)
    return dst


def test_adapter_trained_on_the_base_passes(models):
    validate_adapter(models["good"], models["base"], max_rank=8, name="good")


def test_base_stored_as_pickle_is_checked_on_the_meta_device(models):
    validate_adapter(models["good"], models["bin_only"])
    hub = copy_of(models, "small", "small-hub-bin")
    edit_config(hub, base_model_name_or_path="someone/tiny-llama-128")
    with pytest.raises(AdapterError, match=r"has shape \[8, 128\], but the base model's .*q_proj needs \[r, 256\]"):
        validate_adapter(hub, models["bin_only"])


def test_adapter_of_a_smaller_model_names_both_sizes(models):
    with pytest.raises(AdapterError, match=r"adapter 'small' .* \(hidden_size=128\), but the served model .* hidden_size=256"):
        validate_adapter(models["small"], models["base"], name="small")


def test_adapter_of_an_unknown_base_is_caught_by_weight_shapes(models):
    hub = copy_of(models, "small", "small-hub")
    edit_config(hub, base_model_name_or_path="someone/tiny-llama-128")
    with pytest.raises(AdapterError, match=r"lora_A.weight has shape \[8, 128\], but the base model's .*q_proj needs "
                                           r"\[r, 256\]: the adapter was trained for a different model size"):
        validate_adapter(hub, models["base"])


def test_missing_target_module_is_named_with_the_ones_that_exist(models):
    bad = copy_of(models, "good", "bad-target")
    edit_config(bad, target_modules=["q_proj", "query_key_value"])
    with pytest.raises(AdapterError, match=r"target modules \['query_key_value'\] do not exist in the base model "
                                           r"\(its projection modules are \[.*'q_proj'.*\]\)"):
        validate_adapter(bad, models["base"])


def test_rank_above_the_server_maximum_says_how_to_raise_it(models):
    with pytest.raises(AdapterError, match="LoRA rank 16, above the server's maximum rank 8.*--max-lora-rank"):
        validate_adapter(models["r16"], models["base"], max_rank=8)
    validate_adapter(models["r16"], models["base"], max_rank=16)


def test_adapter_for_another_architecture_is_refused(models):
    gpt = copy_of(models, "good", "gpt")
    edit_config(gpt, auto_mapping={"base_model_class": "GPT2LMHeadModel"})
    with pytest.raises(AdapterError, match="trained on a GPT2LMHeadModel, but .* is a LlamaForCausalLM"):
        validate_adapter(gpt, models["base"])


@pytest.mark.parametrize("change,message", [
    ({"peft_type": "IA3"}, "peft_type 'IA3'; only LORA adapters can be served"),
    ({"r": 0}, "rank r=0; it must be a positive integer"),
    ({"target_modules": []}, "names no target_modules"),
])
def test_broken_adapter_config_is_explained(models, change, message):
    bad = copy_of(models, "good", "broken")
    edit_config(bad, **change)
    with pytest.raises(AdapterError, match=message):
        validate_adapter(bad, models["base"])


def test_not_an_adapter_folder(models):
    with pytest.raises(AdapterError, match="adapter 'x': adapter folder .*nowhere does not exist"):
        validate_adapter(models["root"] / "nowhere", models["base"], name="x")
    with pytest.raises(AdapterError, match="adapter_config.json is missing .*is this a peft LoRA adapter folder"):
        validate_adapter(models["base"], models["base"])
    weightless = copy_of(models, "good", "weightless")
    (weightless / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="has no adapter_model.safetensors"):
        validate_adapter(weightless, models["base"])
