"""LoRA adapter checks against a base model, shared by both engines, run before an adapter is
served (at startup and on ``/v1/load_lora_adapter``).

``validate_adapter(adapter_dir, base_dir, max_rank=None)`` raises ``AdapterError`` with one clear
sentence when the adapter cannot work on that base: unreadable peft config, wrong architecture or
base model, a rank above what the server was started for, target modules the base does not have,
or weight shapes of another model size. The base's module names and weight shapes come from the
safetensors headers (or index): no weights are loaded, no torch needed. A base stored only as
pickles falls back to building the model on the meta device with transformers.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from modelyard.runtime.st_header import read_header
from modelyard.runtime.errors import RuntimeStepError

_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>A|B)(?:\.[^.]+)?\.weight$")
_COMPARED = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")


class AdapterError(RuntimeStepError):
    """The adapter does not fit the served base model (or is not a LoRA adapter at all)."""

    def __init__(self, message: str):
        super().__init__("InvalidAdapter", message)


def _json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise AdapterError(f"{path} is missing ({what})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{path} is not valid JSON ({exc})") from None


def read_adapter_config(adapter_dir: Path) -> dict:
    """The checked ``adapter_config.json`` of a LoRA adapter folder."""
    if not adapter_dir.is_dir():
        raise AdapterError(f"adapter folder {adapter_dir} does not exist")
    path = adapter_dir / "adapter_config.json"
    cfg = _json(path, "is this a peft LoRA adapter folder?")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{path}: peft_type {cfg.get('peft_type')!r}; only LORA adapters can be served")
    r = cfg.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise AdapterError(f"{path}: rank r={r!r}; it must be a positive integer")
    if not cfg.get("target_modules"):
        raise AdapterError(f"{path} names no target_modules")
    if not any((adapter_dir / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise AdapterError(f"{adapter_dir} has no adapter_model.safetensors (or adapter_model.bin)")
    return cfg


def adapter_rank(cfg: dict) -> int:
    return max([int(cfg["r"]), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())])


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name → shape from a safetensors file's header (8-byte length + JSON)."""
    header, _ = read_header(path, AdapterError)
    try:
        return {k: list(v["shape"]) for k, v in header.items()}
    except (TypeError, KeyError) as exc:
        raise AdapterError(f"{path}: a tensor entry of the safetensors header has no shape ({exc})") from None


def base_shapes(base_dir: Path) -> dict[str, list[int]] | None:
    """Every weight name → shape of the base checkpoint; None when it has no safetensors."""
    files = sorted(base_dir.glob("*.safetensors"))
    if not files:
        return None
    shapes: dict[str, list[int]] = {}
    for f in files:
        shapes.update(safetensors_shapes(f))
    return shapes


def _meta_shapes(base_dir: Path) -> dict[str, list[int]] | None:
    """Weight shapes of a pickle-only base, built on the meta device (no memory, no weights)."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:
        return None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(base_dir)))
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _adapter_shapes(adapter_dir: Path) -> dict[str, list[int]]:
    st = adapter_dir / "adapter_model.safetensors"
    if st.is_file():
        return safetensors_shapes(st)
    import torch

    sd = torch.load(str(adapter_dir / "adapter_model.bin"), map_location="meta", weights_only=True)
    return {k: list(v.shape) for k, v in sd.items()}


def _check_architecture(cfg: dict, base_cfg: dict, where: str, base_dir: Path) -> None:
    cls = (cfg.get("auto_mapping") or {}).get("base_model_class")
    archs = base_cfg.get("architectures") or []
    if cls and archs and cls not in archs:
        raise AdapterError(f"{where} was trained on a {cls}, but {base_dir} is a {archs[0]}")
    ref = cfg.get("base_model_name_or_path")
    if not ref or not (Path(ref) / "config.json").is_file() or Path(ref).resolve() == base_dir.resolve():
        return  # a hub id or a path of the training machine: the shape checks decide
    theirs = json.loads((Path(ref) / "config.json").read_text())
    for key in _COMPARED:
        if key in theirs and key in base_cfg and theirs[key] != base_cfg[key]:
            raise AdapterError(f"{where} was trained on {ref} ({key}={theirs[key]}), but the served model "
                               f"{base_dir} has {key}={base_cfg[key]}")


def _check_targets(cfg: dict, modules: set[str], where: str) -> None:
    targets = cfg["target_modules"]
    if isinstance(targets, str):
        if not any(re.fullmatch(targets, m) for m in modules):
            raise AdapterError(f"{where}: target_modules regex {targets!r} matches no module of the base model")
        return
    leaves = {m.rsplit(".", 1)[-1] for m in modules}
    missing = sorted(t for t in targets if t not in leaves and t not in modules)
    if missing:
        linear = sorted(leaf for leaf in leaves if leaf.endswith("proj"))
        raise AdapterError(f"{where}: target modules {missing} do not exist in the base model "
                           f"(its projection modules are {linear or sorted(leaves)[:12]})")


def _check_shapes(cfg: dict, adapter_dir: Path, shapes: dict[str, list[int]], where: str) -> None:
    for key, shape in _adapter_shapes(adapter_dir).items():
        m = _LORA_KEY.match(key)
        if not m:
            continue
        module = m.group("module")
        base = shapes.get(f"{module}.weight")
        if base is None:
            if not any(k.startswith(module + ".") for k in shapes):
                raise AdapterError(f"{where}: weight {key} targets {module}, which the base model does not have")
            continue  # quantized (packed) weight: no plain shape to compare
        if len(base) != 2 or len(shape) != 2:
            continue
        out_f, in_f = base
        ok = shape[1] == in_f if m.group("ab") == "A" else shape[0] == out_f
        if not ok:
            want = f"[r, {in_f}]" if m.group("ab") == "A" else f"[{out_f}, r]"
            raise AdapterError(f"{where}: {key} has shape {list(shape)}, but the base model's {module} needs "
                               f"{want}: the adapter was trained for a different model size")


def validate_adapter(adapter_dir: str | Path, base_dir: str | Path, max_rank: int | None = None,
                     name: str | None = None) -> None:
    """Raise AdapterError unless the LoRA adapter at ``adapter_dir`` can be served on ``base_dir``."""
    adapter_dir, base_dir = Path(adapter_dir), Path(base_dir)
    where = f"adapter {name!r} ({adapter_dir})" if name else f"adapter {adapter_dir}"
    try:
        cfg = read_adapter_config(adapter_dir)
    except AdapterError as exc:
        raise AdapterError(f"adapter {name!r}: {exc.message}" if name else exc.message) from None
    if max_rank is not None and adapter_rank(cfg) > max_rank:
        raise AdapterError(f"{where} has LoRA rank {adapter_rank(cfg)}, above the server's maximum rank "
                           f"{max_rank}; declare it in spec.adapters (the server is then started for its "
                           f"rank) or pass a larger --max-lora-rank in spec.serving.args")
    base_cfg = _json(base_dir / "config.json", "the served model's config")
    _check_architecture(cfg, base_cfg, where, base_dir)
    shapes = base_shapes(base_dir) or _meta_shapes(base_dir)
    if shapes is None:
        return  # no way to list the base's modules here; vLLM/peft will check at load time
    _check_targets(cfg, {k.rsplit(".", 1)[0] for k in shapes}, where)
    _check_shapes(cfg, adapter_dir, shapes, where)
