"""Make inputs in every supported format from a Hugging Face folder, for tests, benchmarks and demos.

``write_gguf`` maps Hugging Face Llama names to llama.cpp's (``token_embd``, ``blk.N.attn_q`` ...),
applies llama.cpp's Q/K row permutation (transformers' loader reverses it) and writes the
byte-level BPE tokenizer as ``tokenizer.ggml.*`` metadata (model ``gpt2``, tokens, types, merges).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

COPY = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "chat_template.jinja")
_GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_GGUF_LAYER = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def copy_side_files(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in COPY:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, dst / name)


def state_dict(src: Path):
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(src).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def save_sharded_bin(state: dict, dst: Path, shard_bytes: int) -> None:
    """``pytorch_model-0000N-of-0000M.bin`` + ``pytorch_model.bin.index.json`` (the pre-safetensors layout)."""
    import torch

    shards, cur, size = [], {}, 0
    for k, v in state.items():
        if cur and size + v.nbytes > shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = v
        size += v.nbytes
    shards.append(cur)
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"pytorch_model-{i:05d}-of-{len(shards):05d}.bin"
        torch.save(shard, dst / name)
        weight_map.update({k: name for k in shard})
    total = sum(v.nbytes for v in state.values())
    (dst / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))


def gguf_name(hf: str) -> str:
    if hf in _GGUF_NAMES:
        return _GGUF_NAMES[hf]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", hf)
    if not m or m.group(2) not in _GGUF_LAYER:
        raise ValueError(f"no GGUF name for {hf}")
    return f"blk.{m.group(1)}.{_GGUF_LAYER[m.group(2)]}.weight"


def _permute(w, n_head: int):
    """llama.cpp's convert_hf_to_gguf permutation of Q/K rows (interleaved rotary halves)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(src: Path, path: Path, qtype: str = "F32") -> Path:
    """Write the Llama in ``src`` (a Hugging Face folder) as one GGUF file; ``qtype`` F32 or Q8_0."""
    import gguf
    import numpy as np

    cfg = json.loads((Path(src) / "config.json").read_text())
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_dimension_count(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
    w.add_rope_freq_base(float(cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    _add_tokenizer(w, Path(src), cfg)
    q = getattr(gguf.GGMLQuantizationType, qtype)
    for name, t in state_dict(src).items():
        arr = t.float().numpy()
        if ".q_proj." in name:
            arr = _permute(arr, cfg["num_attention_heads"])
        elif ".k_proj." in name:
            arr = _permute(arr, cfg["num_key_value_heads"])
        if arr.ndim == 2 and q != gguf.GGMLQuantizationType.F32:
            w.add_tensor(gguf_name(name), gguf.quants.quantize(arr, q), raw_dtype=q)
        else:
            w.add_tensor(gguf_name(name), np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _add_tokenizer(w, src: Path, cfg: dict) -> None:
    tok = json.loads((src / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    specials = {a["id"]: a["content"] for a in tok.get("added_tokens", [])}
    tokens = [None] * max(len(vocab), max(specials, default=-1) + 1)
    for t, i in vocab.items():
        tokens[i] = t
    for i, t in specials.items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in specials else 1 for i in range(len(tokens))])
    w.add_token_merges(merges)
    for key, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id), ("pad_token_id", w.add_pad_token_id)):
        if isinstance(cfg.get(key), int):
            add(cfg[key])
    template = _chat_template(src)
    if template:
        w.add_chat_template(template)


def _chat_template(src: Path) -> str | None:
    if (src / "chat_template.jinja").is_file():
        return (src / "chat_template.jinja").read_text()
    cfg = src / "tokenizer_config.json"
    return json.loads(cfg.read_text()).get("chat_template") if cfg.is_file() else None
