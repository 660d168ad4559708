"""The honest request surface of the vllm engine: vLLM's request models accept unknown fields
(``extra="allow"``, only a log line says they were ignored) and declare a few they never use.
Every field of a completions / chat completions body must be one vLLM's own request model
declares, minus those it ignores; anything else is refused with 400 naming the field."""
from __future__ import annotations

# Declared by vLLM's request models but not used by its serving code (vLLM 0.32).
IGNORED_BY_VLLM = {
    "user": "vLLM ignores it (no per-user accounting)",
    "parallel_tool_calls": "vLLM's chat completions ignore it",
}


_MODELS = {True: ("vllm.entrypoints.openai.chat_completion.protocol", "ChatCompletionRequest"),
           False: ("vllm.entrypoints.openai.completion.protocol", "CompletionRequest")}


def _declared(chat: bool) -> frozenset[str] | None:
    import importlib

    module, name = _MODELS[chat]
    try:  # by name: this runs inside vLLM's server, and modelyard itself never depends on vllm
        return frozenset(getattr(importlib.import_module(module), name).model_fields)
    except (ImportError, AttributeError):  # another vLLM layout: vLLM's own validation only
        return None


_CACHE: dict[bool, frozenset[str] | None] = {}


def refusal(body: dict, chat: bool) -> tuple[str, str] | None:
    """(field, message) for the first field this engine would not honour, else None."""
    if chat not in _CACHE:
        _CACHE[chat] = _declared(chat)
    declared = _CACHE[chat]
    for name in body:
        if name in IGNORED_BY_VLLM:
            return name, f"{name}: not supported by the vllm engine ({IGNORED_BY_VLLM[name]}); remove it"
        if declared is not None and name not in declared:
            return name, f"{name}: this field is not supported by this server; remove it"
    return None
