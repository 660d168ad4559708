"""A model as the planner sees it: groups of Linear layers plus everything else.

Quantization applies to the Linear weights inside the decoder blocks only (llmcompressor's
``targets="Linear", ignore=["lm_head"]``; bitsandbytes skips ``lm_head`` too). Embeddings,
norms, biases, MoE routers and an untied ``lm_head`` stay at 16 bits.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Linear:
    """``count`` identical Linear layers of shape (fan_out, fan_in)."""

    name: str
    count: int
    fan_in: int
    fan_out: int
    bias: bool = False

    @property
    def weights(self) -> int:
        return self.count * self.fan_in * self.fan_out

    @property
    def params(self) -> int:
        return self.weights + (self.count * self.fan_out if self.bias else 0)


@dataclass
class Layout:
    family: str
    embedding: int = 0  # token (+ position) embeddings
    lm_head: int = 0  # an untied output projection (0 when tied to the embeddings)
    other: int = 0  # norms, routers, biases outside `linears`
    linears: list[Linear] = field(default_factory=list)

    def add(self, name: str, count: int, fan_in: int, fan_out: int, bias: bool = False) -> None:
        if count > 0 and fan_in > 0 and fan_out > 0:
            self.linears.append(Linear(name, count, fan_in, fan_out, bias))

    @property
    def parameters(self) -> int:
        return self.embedding + self.lm_head + self.other + sum(l.params for l in self.linears)

    @property
    def linear_weights(self) -> int:
        """Weights a quantization scheme compresses."""
        return sum(l.weights for l in self.linears)

    @property
    def linear_biases(self) -> int:
        return sum(l.params - l.weights for l in self.linears)

    @property
    def unquantized(self) -> int:
        """Parameters that stay at 16 bits whatever the precision."""
        return self.parameters - self.linear_weights

    def output_channels(self) -> int:
        """Rows of all quantized Linear weights: one scale each for per-channel schemes."""
        return sum(l.count * l.fan_out for l in self.linears)

    def groups(self, group_size: int) -> int:
        """Number of (row, group) blocks for a per-group scheme (e.g. W4A16, group 128)."""
        return sum(l.count * l.fan_out * -(-l.fan_in // group_size) for l in self.linears)

    def blocks(self, rows: int, cols: int) -> int:
        """Number of 2-D blocks (DeepSeek-V3's fp8 ``weight_block_size`` [128, 128])."""
        return sum(l.count * -(-l.fan_out // rows) * -(-l.fan_in // cols) for l in self.linears)

    def lora_params(self, rank: int) -> int:
        """A LoRA A+B pair on every Linear: rank × (fan_in + fan_out) each."""
        return sum(l.count * rank * (l.fan_in + l.fan_out) for l in self.linears)
