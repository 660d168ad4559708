"""What a checkpoint for a given config.json must hold, from the model built on the meta device.

``expected_for(config_dir)`` builds the Hugging Face model from its config with no memory (meta
tensors) and returns the state-dict names and shapes, which names may be absent (tied weights),
and which the model never stores (non-persistent buffers). ``align()`` maps a reader's names onto
those (stripping wrapper prefixes such as ``module.`` or ``model.``) and fails listing every
missing, unexpected or wrongly shaped tensor.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from modelyard.runtime.convert.source import Entry, TensorSource
from modelyard.runtime.errors import ConvertError


@dataclass
class Expected:
    shapes: dict[str, tuple[int, ...]]
    optional: set[str] = field(default_factory=set)  # tied weights a checkpoint may leave out
    ignorable: set[str] = field(default_factory=set)  # buffers a checkpoint may carry but the model ignores


def expected_for(config_dir: Path, config=None) -> Expected:
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    config_file = Path(config_dir) / "config.json"
    if config is None:
        if not config_file.is_file():
            raise ConvertError("MissingConfig", f"no config.json in {config_dir}; pass the model's config with --config CONFIG_JSON")
        try:
            config = AutoConfig.from_pretrained(str(config_dir))
        except Exception as exc:
            raise ConvertError("BadConfig", f"{config_file} cannot be read by transformers: {exc}") from None
    with torch.device("meta"):
        try:
            model = AutoModelForCausalLM.from_config(config)
        except ValueError:
            model = AutoModel.from_config(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    optional: set[str] = set()
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "tie_word_embeddings", False):
        tied = getattr(model, "_tied_weights_keys", None) or {}
        optional |= set(tied.keys() if isinstance(tied, dict) else tied)
    buffers = {n for n, _ in model.named_buffers()}
    ignorable = {b for b in buffers if b not in shapes}
    return Expected(shapes, optional, ignorable | {"rotary_emb.inv_freq"})


def align(source: TensorSource, expected: Expected, label: str) -> None:
    """Set ``source.rename``/``source.dropped`` so its tensors match ``expected``, or raise."""
    names = [e.name for e in source.entries]
    rename = _best_rename(names, expected)
    source.rename = rename
    source.dropped = {n for n in names if _ignorable(rename(n), expected)}
    planned = {e.name: e for e in source.planned()}
    _check(planned, expected, label)


def _ignorable(name: str, expected: Expected) -> bool:
    """Buffers the model recomputes, and tied copies (e.g. lm_head.weight) the model re-ties on load."""
    return name in expected.ignorable or name.endswith(".inv_freq") or name in expected.optional


def _best_rename(names: list[str], expected: Expected):
    """Of 'strip this wrapper prefix' candidates, the one that matches the most expected names."""
    prefixes = {""}
    for n in names:
        parts = n.split(".")
        for i in range(1, min(3, len(parts))):
            prefixes.add(".".join(parts[:i]) + ".")
    best, best_hits = (lambda n: n), -1
    for prefix in sorted(prefixes, key=len):
        fn = _renamer(prefix, expected.shapes)
        hits = sum(fn(n) in expected.shapes for n in names)
        if hits > best_hits:
            best, best_hits = fn, hits
    return best


def _renamer(prefix: str, known: dict):
    def fn(name: str) -> str:
        stripped = name[len(prefix):] if prefix and name.startswith(prefix) else name
        if stripped not in known and "model." + stripped in known:  # a base-model checkpoint (LlamaModel keys)
            return "model." + stripped
        return stripped

    return fn


def _check(planned: dict[str, Entry], expected: Expected, label: str) -> None:
    missing = sorted(set(expected.shapes) - set(planned) - expected.optional)
    unexpected = sorted(set(planned) - set(expected.shapes))
    wrong = [
        f"{n} is {list(e.shape)} but config.json implies {list(expected.shapes[n])}"
        for n, e in planned.items()
        if n in expected.shapes and tuple(e.shape) != expected.shapes[n]
    ]
    if not (missing or unexpected or wrong):
        return
    lines = []
    if wrong:
        lines.append("shape mismatch: " + "; ".join(wrong[:10]))
    if missing:
        lines.append(f"missing {len(missing)}: " + ", ".join(missing[:10]))
    if unexpected:
        lines.append(f"unexpected {len(unexpected)}: " + ", ".join(unexpected[:10]))
    reason = "ShapeMismatch" if wrong else "TensorNamesMismatch"
    raise ConvertError(reason, f"{label} does not match the architecture in config.json: " + " | ".join(lines))
