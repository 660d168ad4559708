"""LoRA adapter checks before an adapter is served: readable peft config, a positive rank,
target modules that exist in the base model, and weight shapes that match it. Each problem is
one clear sentence naming the adapter and the file."""
from __future__ import annotations

import json
import re
from pathlib import Path

# One error type for both engines: a RuntimeStepError with reason InvalidAdapter.
from modelyard.runtime.adapters import AdapterError


def parse_spec(spec: str) -> tuple[str, str]:
    """``NAME=DIR`` → (name, dir)."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise AdapterError(f"--adapter {spec!r}: expected NAME=DIR, e.g. --adapter sql=/models/sql-lora")
    return name.strip(), path.strip()


def read_config(name: str, path: str) -> dict:
    """The adapter's ``adapter_config.json``, checked for what the accelerate engine needs."""
    cfg_path = Path(path) / "adapter_config.json"
    if not Path(path).is_dir():
        raise AdapterError(f"adapter {name!r}: {path} is not a directory")
    if not cfg_path.is_file():
        raise AdapterError(f"adapter {name!r}: {cfg_path} is missing (is this a peft adapter folder?)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterError(f"adapter {name!r}: {cfg_path} is not valid JSON ({exc})") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"adapter {name!r}: peft_type {cfg.get('peft_type')!r} in {cfg_path}; only LORA is supported")
    r = cfg.get("r")
    if not isinstance(r, int) or r <= 0:
        raise AdapterError(f"adapter {name!r}: rank r={r!r} in {cfg_path}; must be a positive integer")
    if not cfg.get("target_modules"):
        raise AdapterError(f"adapter {name!r}: {cfg_path} names no target_modules")
    if not any((Path(path) / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise AdapterError(f"adapter {name!r}: no adapter_model.safetensors (or .bin) in {path}")
    return cfg


def _check_base(name: str, cfg: dict, base_config: dict) -> None:
    ref = cfg.get("base_model_name_or_path")
    if not ref or not (Path(ref) / "config.json").is_file():
        return  # a hub id or a path of the training machine: rely on the shape checks below
    theirs = json.loads((Path(ref) / "config.json").read_text())
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"):
        if key in theirs and key in base_config and theirs[key] != base_config[key]:
            raise AdapterError(f"adapter {name!r} was trained on {ref} ({key}={theirs[key]}), "
                               f"but the served model has {key}={base_config[key]}")


def _targets_present(name: str, cfg: dict, module_names: list[str]) -> None:
    targets = cfg["target_modules"]
    if isinstance(targets, str):
        if not any(re.fullmatch(targets, m) for m in module_names):
            raise AdapterError(f"adapter {name!r}: target_modules regex {targets!r} matches no module of the base model")
        return
    leaves = {m.rsplit(".", 1)[-1] for m in module_names}
    missing = sorted(t for t in targets if t not in leaves and t not in module_names)
    if missing:
        raise AdapterError(f"adapter {name!r}: target modules {missing} do not exist in the base model "
                           f"(it has e.g. {sorted(leaves)[:12]})")


def _weights(path: str) -> dict:
    p = Path(path)
    if (p / "adapter_model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(p / "adapter_model.safetensors"), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    import torch

    sd = torch.load(str(p / "adapter_model.bin"), map_location="cpu", weights_only=True)
    return {k: tuple(v.shape) for k, v in sd.items()}


def _shapes_match(name: str, cfg: dict, path: str, base) -> None:
    for key, shape in _weights(path).items():
        m = re.match(r"(?:base_model\.model\.)?(.+)\.lora_(A|B)(?:\.[^.]+)?\.weight$", key)
        if not m:
            continue
        try:
            module = base.get_submodule(m.group(1))
        except AttributeError:
            raise AdapterError(f"adapter {name!r}: weight {key} targets {m.group(1)}, which the base model does not have") from None
        module = getattr(module, "base_layer", module)
        fan_in, fan_out = getattr(module, "in_features", None), getattr(module, "out_features", None)
        want = (cfg["r"], fan_in) if m.group(2) == "A" else (fan_out, cfg["r"])
        if fan_in is not None and tuple(shape) != want:
            raise AdapterError(f"adapter {name!r}: {key} has shape {list(shape)}, but the base model "
                               f"needs {list(want)} (rank {cfg['r']}): trained for a different model or rank")


def check_against(name: str, path: str, cfg: dict, base_model, base_config: dict) -> None:
    """Raise AdapterError unless the adapter at ``path`` fits ``base_model`` (a transformers model)."""
    _check_base(name, cfg, base_config)
    _targets_present(name, cfg, [n for n, _ in base_model.named_modules() if n])
    _shapes_match(name, cfg, path, base_model)
