"""The planner's answer: a flat dataclass with a camelCase JSON form (``status.plan``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@dataclass
class Plan:
    architecture: str
    family: str
    parameters: int
    weight_bytes: int
    kv_cache_bytes_per_token: int
    engine: str
    precision: str
    quantization: str | None
    gpus: int
    gpu_memory_bytes: int
    tensor_parallel_size: int
    per_gpu_bytes: int
    max_model_len: int
    max_position_embeddings: int
    fits: bool
    reason: str
    max_memory: dict[str, str] | None = None
    offload: bool = False
    host_memory_bytes: int = 0
    host_bytes: int = 0
    kv_cache_bytes: int = 0
    kv_cache_tokens: int = 0
    overhead_bytes: int = 0
    suggestion: str | None = None
    pipeline_parallel_size: int = 1
    nodes: int = 1
    gpus_per_node: int = 0  # GPUs each node (pod) uses; 0 on CPU
    layout: str = ""  # the TP × PP × nodes choice, and why
    assumptions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {_camel(k): v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        known = {_camel(f.name): f.name for f in fields(cls)}
        return cls(**{known[k]: v for k, v in data.items() if k in known})
