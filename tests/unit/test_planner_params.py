"""The planner's parameter count equals what transformers builds from the same config.json."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

from modelyard.planner import plan

CONFIGS = Path(__file__).parent.parent / "fixtures" / "configs"
ARCHITECTURES = sorted(p.stem for p in CONFIGS.glob("*.json"))
# Published totals, as a sanity check on the fixtures themselves.
PUBLISHED = {
    "llama-3.1-8b": 8_030_261_248,
    "mistral-7b-v0.1": 7_241_732_096,
    "mixtral-8x7b-v0.1": 46_702_792_704,
    "qwen2-0.5b": 494_032_768,
    "gemma-2-9b": 9_241_705_984,
    "phi-3-mini-4k": 3_821_079_552,
    "gpt2": 124_439_808,
    "pythia-160m": 162_322_944,
    "qwen3-30b-a3b": 30_532_122_624,
    "deepseek-v3": 671_026_404_352,  # "671B of the Main Model weights" (MTP module not built)
}


def _load(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def _transformers_count(name: str, tmp_path: Path) -> int:
    transformers.logging.set_verbosity_error()
    # Count the architecture as built: a pre-quantized checkpoint's quantization_config
    # changes storage, not the parameter count.
    data = {k: v for k, v in _load(name).items() if k != "quantization_config"}
    (tmp_path / "config.json").write_text(json.dumps(data))
    cfg = AutoConfig.from_pretrained(tmp_path / "config.json")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())  # parameters() counts tied weights once


def test_at_least_ten_real_architectures():
    assert len(ARCHITECTURES) >= 10
    families = {_load(n)["model_type"] for n in ARCHITECTURES}
    assert {"llama", "mistral", "mixtral", "qwen2", "gemma2", "phi3", "gpt2", "gpt_neox",
            "qwen3_moe", "falcon", "qwen3", "deepseek_v3"} <= families


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_parameter_count_equals_transformers(name, tmp_path):
    assert plan(_load(name)).parameters == _transformers_count(name, tmp_path)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_published_total(name):
    assert plan(_load(name)).parameters == PUBLISHED[name]


def test_tied_embeddings_counted_once():
    tied = _load("qwen2-0.5b")
    untied = {**tied, "tie_word_embeddings": False}
    assert plan(untied).parameters - plan(tied).parameters == 151936 * 896


def test_all_moe_experts_counted():
    cfg = _load("mixtral-8x7b-v0.1")
    one_more = {**cfg, "num_local_experts": 9}
    # one more expert per layer: gate+up+down (3 × 4096 × 14336) plus its router row (4096)
    assert plan(one_more).parameters - plan(cfg).parameters == 32 * (3 * 4096 * 14336 + 4096)


def test_unknown_family_is_counted_llama_style_and_said():
    cfg = {**_load("llama-3.1-8b"), "model_type": "somethingnew", "architectures": ["X"]}
    p = plan(cfg)
    assert p.parameters == 8_030_261_248
    assert any("somethingnew" in a for a in p.assumptions)
