"""Tiny models made offline, for tests, benchmarks and `make demo`.

``make_tiny_llama(path)`` writes a Hugging Face folder (config.json, model.safetensors, a byte-level
BPE tokenizer trained here with a chat template) that transformers, accelerate, peft and vLLM's CPU
backend all load. Head dim is 64 because vLLM's CPU attention rejects smaller ones.
No network is touched.
"""
from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

_CORPUS = [
    "modelyard deploys models declaratively on kubernetes.",
    "The operator downloads weights, converts them and serves them.",
    "Hello world! How are you today? I am fine, thank you.",
    "A model that does not fit is reported before any pod is scheduled.",
    "Tensor parallel shards attention heads across GPUs.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
]

TINY_LLAMA = dict(
    vocab_size=1024,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)


def make_tokenizer(path: str | Path, vocab_size: int = 1024):
    """Train a byte-level BPE on a small built-in corpus and save it as a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|pad|>", "<s>", "</s>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(path))
    return fast


def make_tiny_llama(path: str | Path, seed: int = 0, dtype: str = "float32", **overrides):
    """Write a random tiny Llama with its tokenizer to ``path``; return the path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(path, vocab_size=overrides.get("vocab_size", TINY_LLAMA["vocab_size"]))
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        **{**TINY_LLAMA, **overrides},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(path))
    return path


def make_tiny_adapter(base: str | Path, out: str | Path, seed: int, targets=("q_proj", "v_proj"), r: int = 8,
                      **lora) -> Path:
    """Write a LoRA adapter with random (non-zero) weights for the model at ``base``; return ``out``.
    ``lora``: more ``LoraConfig`` settings (e.g. ``use_dora=True``)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    peft = get_peft_model(model, LoraConfig(init_lora_weights=False, r=r, target_modules=list(targets), **lora))
    peft.save_pretrained(str(out))
    return Path(out)


def read_config(path: str | Path) -> dict:
    return json.loads((Path(path) / "config.json").read_text())
