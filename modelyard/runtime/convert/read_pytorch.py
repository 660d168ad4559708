"""Read PyTorch pickled state dicts safely: ``torch.load(weights_only=True, mmap=True)`` only.

A pickle that needs arbitrary code (a whole ``nn.Module`` saved with ``torch.save(model)``, or a
crafted ``__reduce__``) is refused by torch's restricted unpickler before any of its code runs.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from modelyard.runtime.convert.source import Entry, TensorSource
from modelyard.runtime.errors import ConvertError

RESAVE_HINT = (
    "modelyard only loads plain state dicts (torch.load with weights_only=True) and never runs code from a pickle; "
    "re-save the weights where the model's code is trusted with `torch.save(model.state_dict(), path)`"
)
_WRAPPERS = ("state_dict", "model_state_dict", "model", "module")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    legacy = _is_legacy(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=not legacy)
    except pickle.UnpicklingError as exc:
        detail = _global_named(str(exc))
        raise ConvertError("UnsafePickle", f"{path.name} needs arbitrary code to unpickle ({detail.strip()}); {RESAVE_HINT}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ConvertError("CorruptFile", f"{path.name} is not a readable PyTorch checkpoint (truncated or corrupted?): {exc}") from None
    return _unwrap(obj, path)


def _global_named(text: str) -> str:
    """The one useful line of torch's refusal (which global it met), without its allowlisting advice."""
    m = re.search(r"(Unsupported global: GLOBAL [^ ]+|Unsupported operand [^ .]+|Trying to load unsupported GLOBAL [^ ]+)", text)
    return m.group(1) if m else text.strip().splitlines()[0][:200] if text.strip() else "refused by the restricted unpickler"


def _is_legacy(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) != b"PK"


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in _WRAPPERS:
            if isinstance(obj.get(key), dict):
                return _unwrap(obj[key], path)
    kind = type(obj).__name__
    raise ConvertError(
        "NotAStateDict",
        f"{path.name} holds a {kind}, not a state dict of tensors (expected {{name: tensor}}, optionally under 'state_dict'); {RESAVE_HINT}",
    )


class PytorchSource(TensorSource):
    format = "pytorch"

    def __init__(self, files: list[Path]):
        super().__init__()
        self.files = files
        self.entries = []
        for path in files:
            state = load_state_dict(path)
            self.entries += [Entry(k, tuple(v.shape), v.dtype, path) for k, v in state.items()]
            del state
        seen: dict[str, Path] = {}
        for e in self.entries:
            if e.name in seen:
                raise ConvertError("DuplicateTensor", f"tensor {e.name} appears in both {seen[e.name].name} and {e.file.name}")
            seen[e.name] = e.file

    def _iter(self):
        for path in self.files:
            state = load_state_dict(path)
            try:
                yield from state.items()
            finally:
                del state  # unmaps this shard before the next one is opened
