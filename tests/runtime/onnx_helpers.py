"""Tiny test models for the onnxruntime engine and their real exports.

Random weights with the default init (std 0.02) make greedy decoding repeat one token, which
proves nothing: these use initializer_range 0.15 and rope thetas other than the default, and the
Qwen2 ties its embeddings (the export must reuse them as the LM head)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from modelyard.runtime.tiny import make_tiny_llama, make_tokenizer
from tests.runtime.accelerate_helpers import MODELYARD


def make_llama(path: Path, seed: int = 1) -> Path:
    return make_tiny_llama(path, seed=seed, initializer_range=0.15, rope_theta=5000.0)


def make_qwen2_tied(path: Path, seed: int = 2) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(path)
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, rope_theta=25000.0, initializer_range=0.15,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # q/k/v biases start at zero: give them values too
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.1)
    model.save_pretrained(str(path))
    return path


def export(src: Path, out: Path, *extra: str) -> dict:
    """`modelyard convert --engine onnxruntime` as a user runs it; the termination-log JSON."""
    term = out.parent / f"{out.name}.result.json"
    proc = subprocess.run([MODELYARD, "convert", "--input", str(src), "--output", str(out), "--engine", "onnxruntime",
                           "--termination-log", str(term), *extra], capture_output=True, text=True, timeout=900)
    result = json.loads(term.read_text()) if term.is_file() else {}
    result["_rc"], result["_stderr"] = proc.returncode, proc.stderr
    return result
