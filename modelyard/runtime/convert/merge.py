"""Merge LoRA adapters into the base weights at convert time (peft ``merge_and_unload``)."""
from __future__ import annotations

from pathlib import Path

from modelyard.runtime.errors import ConvertError


def merge_adapters(model, adapters: list[str]):
    """Return ``model`` with each adapter folder merged in, in the order given."""
    from peft import PeftModel

    for adapter in adapters:
        path = Path(adapter)
        if not (path / "adapter_config.json").is_file():
            raise ConvertError("BadAdapter", f"--merge-adapter {adapter}: no adapter_config.json there (expected a peft LoRA folder)")
        try:
            model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
        except Exception as exc:
            raise ConvertError("BadAdapter", f"--merge-adapter {adapter} does not fit this model: {type(exc).__name__}: {exc}") from None
    return model


def adapter_fingerprints(adapters: list[str]) -> list[dict]:
    from modelyard.runtime.convert.provenance import sha256

    out = []
    for a in adapters:
        path = Path(a)
        weights = sorted(path.glob("adapter_model.*"))
        out.append({"path": str(path), "sha256": sha256(weights[0]) if weights else None})
    return out
