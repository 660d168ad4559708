"""Read a TorchScript archive's weights (``torch.jit.load``); names are mapped by ``expected.align``.

TorchScript archives carry TorchScript code, not Python pickles with ``__reduce__``; their
parameters and buffers are extracted and the module itself is dropped.
"""
from __future__ import annotations

from pathlib import Path

from modelyard.runtime.convert.source import StateDictSource
from modelyard.runtime.errors import ConvertError


def torchscript_source(path: Path) -> StateDictSource:
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ConvertError("CorruptFile", f"{path.name} is not a loadable TorchScript archive: {exc}") from None
    state = {k: v.detach() for k, v in module.state_dict().items()}
    del module
    if not state:
        raise ConvertError("EmptyCheckpoint", f"{path.name} is a TorchScript archive with no parameters or buffers")
    return StateDictSource(state, "torchscript", path)
