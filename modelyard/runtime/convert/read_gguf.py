"""Dequantize a GGUF file through transformers' GGUF loader into a state dict.

``from_pretrained(dir, gguf_file=...)`` reads the architecture and config from the GGUF metadata,
dequantizes every tensor (exact for F32/F16, approximate for Q8_0, Q4_K, ...) and reverses the
Q/K row permutation llama.cpp applies. The whole dequantized model is held in memory: GGUF is not
streamed. The tokenizer comes from the GGUF's ``tokenizer.ggml.*`` metadata when present.
"""
from __future__ import annotations

from pathlib import Path

from modelyard.runtime.convert.source import StateDictSource
from modelyard.runtime.errors import ConvertError


class GGUFSource(StateDictSource):
    def __init__(self, path: Path, dtype=None):
        model = load_gguf_model(path, dtype)
        self._model = model
        super().__init__(dict(model.state_dict()), "gguf", path)
        self.config = model.config

    def model(self):
        return self._model


def load_gguf_model(path: Path, dtype=None):
    import torch
    from transformers import AutoModelForCausalLM

    _check_header(path)
    try:
        return AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=dtype or torch.float32, low_cpu_mem_usage=True
        )
    except ConvertError:
        raise
    except Exception as exc:
        raise ConvertError("CorruptFile", f"{path.name}: transformers cannot load this GGUF file: {type(exc).__name__}: {exc}") from None


def load_gguf_tokenizer(path: Path):
    """The tokenizer in the GGUF metadata, or None when the file carries none."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception:
        return None
    _fix_special_tokens(tok, path)
    return tok


def _fix_special_tokens(tok, path: Path) -> None:
    """Set bos/eos/pad and the chat template from the GGUF metadata itself (transformers' llama GGUF
    converter swaps bos and eos, and drops pad and ``tokenizer.chat_template``)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields

    def scalar(key):
        f = fields.get(key)
        return None if f is None or not f.data else f.contents()

    for attr, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("pad_token", "padding_token_id")):
        idx = scalar(f"tokenizer.ggml.{key}")
        if isinstance(idx, int) and 0 <= idx < len(tok):
            setattr(tok, attr, tok.convert_ids_to_tokens(idx))
    template = scalar("tokenizer.chat_template")
    if isinstance(template, str) and template:
        tok.chat_template = template


def _check_header(path: Path) -> None:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:
        raise ConvertError("CorruptFile", f"{path.name} is not a readable GGUF file (truncated or corrupted?): {type(exc).__name__}: {exc}") from None
    if "general.architecture" not in reader.fields:
        raise ConvertError("CorruptFile", f"{path.name} has no general.architecture field; GGUF files need it to be converted")
