"""Requests for different LoRA adapters in one forward pass of the continuous batcher.

transformers' continuous batching packs every request of a forward pass into one sequence
(``[1, tokens, hidden]``), so the model sees one batch row and, through PEFT, one active adapter.
PEFT already serves *mixed* batches — ``adapter_names``, one name per batch row (``"__base__"``
for none): each LoRA layer computes the base output for all rows and adds each adapter's
``lora_B(lora_A(x)) * scaling`` to its own rows — but along the batch dimension. ``TokenAdapters``
hands it the packed sequence as rows: for every forward pass the manager schedules, it lists the
adapter of each token (from the requests in the pass, in their packed order, ``query_length``
tokens each), and hooks on PEFT's LoRA layers present the input as ``[tokens, 1, hidden]`` with
those names and turn the output back. Only on the manager's thread: the solo path and the static
path run ``generate`` on another thread and see PEFT unchanged.

Adapters PEFT cannot mix (DoRA) keep the grouping per adapter (``accelerate_admit``); so does a
manager that replays CUDA graphs, which would bake one pass's token positions into the graph.
"""
from __future__ import annotations

import threading

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class _Mixed:
    def __repr__(self) -> str:
        return "MIXED"


MIXED = _Mixed()  # the admission group of requests that can share a forward pass, whatever their adapter


def applies(manager) -> str | None:
    """Why mixing adapters in a forward pass cannot apply to this manager, or None."""
    runner = getattr(manager.batch_processor, "model_runner", None)
    if runner is None or getattr(runner, "use_cuda_graph_varlen", True) or getattr(runner, "use_cuda_graph_decode", True):
        return "the manager replays CUDA graphs"
    return None


def mixable(peft_model, adapter: str | None) -> bool:
    """True for the base model and plain LoRA adapters (PEFT refuses DoRA in a mixed batch)."""
    if adapter is None:
        return True
    cfg = getattr(peft_model, "peft_config", {}).get(adapter)
    return cfg is not None and str(getattr(cfg, "peft_type", "")).endswith("LORA") and not getattr(cfg, "use_dora", False)


class TokenAdapters:
    """Per forward pass: which adapter each packed token uses; hooks that make PEFT apply it."""

    def __init__(self, peft_model):
        self.by_request: dict[str, str] = {}   # manager request id -> adapter name (BASE for none)
        self._local = threading.local()         # the names of the pass being run, on the manager's thread
        self.mixed_passes = 0                   # passes that ran more than one adapter (or base + adapters)
        self.refresh(peft_model)

    def refresh(self, model) -> None:
        """Hook the LoRA layers not hooked yet (an adapter loaded later may wrap new modules)."""
        from peft.tuners.lora import LoraLayer

        for layer in model.modules():
            if isinstance(layer, LoraLayer) and not getattr(layer, "_modelyard_token_adapters", False):
                layer.register_forward_pre_hook(self._pre, with_kwargs=True)
                layer.register_forward_hook(self._post, with_kwargs=True)
                layer._modelyard_token_adapters = True

    def plan(self, requests_in_batch) -> None:
        """On the manager's thread, with the requests of the pass it is about to run (packed order);
        None: the pass runs one adapter group, PEFT as it is."""
        if requests_in_batch is None:
            self._local.names = None
            return
        names: list[str] = []
        for r in requests_in_batch:
            names.extend([self.by_request.get(r.state.request_id, BASE)] * r.query_length)
        self._local.names = names
        if names and names.count(names[0]) != len(names):
            self.mixed_passes += 1

    def _pre(self, module, args, kwargs):
        names = getattr(self._local, "names", None)
        if names is None or not args or args[0].dim() != 3 or args[0].shape[0] != 1:
            return None
        x = args[0].transpose(0, 1)  # [tokens, 1, hidden]: a token per row, PEFT's mixed-batch layout
        if len(names) < x.shape[0]:  # padded inputs: the padding rows use the base weights
            names = names + [BASE] * (x.shape[0] - len(names))
        return (x, *args[1:]), {**kwargs, "adapter_names": names}

    def _post(self, module, args, kwargs, output):
        if "adapter_names" not in kwargs or getattr(self._local, "names", None) is None:
            return None
        return output.transpose(0, 1)
