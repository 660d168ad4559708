"""Reading ``config.json``: field aliases across families and clear errors for missing keys."""
from __future__ import annotations

from typing import Any

from modelyard.planner.errors import PlanError

# Canonical name → the names older or non-Llama configs use for the same thing
# (the same aliases as transformers' per-config ``attribute_map``).
ALIASES: dict[str, tuple[str, ...]] = {
    "hidden_size": ("n_embd", "d_model", "dim"),
    "num_hidden_layers": ("n_layer", "num_layers", "n_layers"),
    "num_attention_heads": ("n_head", "num_heads", "n_heads"),
    "num_key_value_heads": ("num_kv_heads", "n_head_kv", "multi_query_group_num"),
    "intermediate_size": ("n_inner", "ffn_hidden_size", "ffn_dim"),
    "max_position_embeddings": ("n_positions", "max_seq_len", "seq_length", "n_ctx"),
}

_MISSING = object()


class Cfg:
    """A view over a config dict with alias lookup; ``need`` raises PlanError naming the key."""

    def __init__(self, data: dict[str, Any], source: str = "config.json"):
        if not isinstance(data, dict):
            raise PlanError(f"{source}: expected a JSON object, got {type(data).__name__}")
        self.data = data
        self.source = source

    def get(self, key: str, default: Any = None) -> Any:
        for name in (key, *ALIASES.get(key, ())):
            value = self.data.get(name, _MISSING)
            if value is not _MISSING and value is not None:
                return value
        return default

    def need(self, key: str) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise PlanError(f"{self.source}: missing '{key}'")
        return value

    def need_int(self, key: str) -> int:
        value = self.need(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise PlanError(f"{self.source}: '{key}' must be a non-negative integer, got {value!r}")
        return value

    def int_or(self, key: str, default: int) -> int:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise PlanError(f"{self.source}: '{key}' must be an integer, got {value!r}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        return default if value is None else bool(value)

    @property
    def model_type(self) -> str:
        return str(self.data.get("model_type") or "")

    @property
    def architecture(self) -> str:
        archs = self.data.get("architectures") or []
        return str(archs[0]) if archs else ""

    # Shapes shared by most families.
    @property
    def hidden(self) -> int:
        return self.need_int("hidden_size")

    @property
    def layers(self) -> int:
        return self.need_int("num_hidden_layers")

    @property
    def heads(self) -> int:
        heads = self.need_int("num_attention_heads")
        if heads == 0:
            raise PlanError(f"{self.source}: 'num_attention_heads' must be > 0")
        return heads

    @property
    def kv_heads(self) -> int:
        return self.int_or("num_key_value_heads", self.heads)

    @property
    def head_dim(self) -> int:
        """Explicit ``head_dim`` when the config has one (Gemma: 256 ≠ hidden/heads)."""
        return self.int_or("head_dim", self.hidden // self.heads)

    @property
    def vocab(self) -> int:
        return self.need_int("vocab_size")


def text_view(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Multimodal checkpoints nest the language model under ``text_config``: plan that."""
    if isinstance(config.get("text_config"), dict) and "num_hidden_layers" not in config:
        merged = {**config["text_config"]}
        merged.setdefault("architectures", config.get("architectures"))
        for key in ("quantization_config", "torch_dtype", "dtype", "tie_word_embeddings"):
            if key in config and key not in merged:
                merged[key] = config[key]
        return merged, ["planned the language model in text_config; a vision/audio tower is not counted"]
    return config, []
