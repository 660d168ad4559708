"""Serving engines, picked by name from a small registry.

Each engine module exposes ``serve(args) -> int`` taking the parsed ``modelyard serve`` arguments
(``model``, ``adapter`` [list of "NAME=DIR"], ``port``, ``host``, ``served_model_name``, ``gpus``,
``precision``, ``max_model_len``, ``max_memory``, ``offload_folder``, ``planned_gpu_bytes``,
``extra`` [what followed ``--``]) and serving the OpenAI-compatible API with the metrics of
``modelyard.runtime.metrics`` until stopped.
"""
from __future__ import annotations

import importlib

ENGINES: dict[str, str] = {
    "accelerate": "modelyard.runtime.engines.accelerate",
    "vllm": "modelyard.runtime.engines.vllm",
    "onnxruntime": "modelyard.runtime.engines.onnxruntime",
}


class EngineError(Exception):
    """The engine cannot be used (unknown name, not installed)."""


def load(name: str):
    """The engine module for ``name``; EngineError with the valid names when it is unknown."""
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r}; available engines: {', '.join(sorted(ENGINES))}")
    try:
        return importlib.import_module(ENGINES[name])
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == ENGINES[name] or exc.name.split(".")[0] == name):
            raise EngineError(f"the {name} engine is not installed in this environment") from None
        raise
