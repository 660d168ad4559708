"""What the HTTP layer needs from an engine. ``AccelerateEngine`` implements it; any engine that
generates in-process can reuse the server as is.

``stream(job)`` yields ``Delta`` text pieces and ends with one ``Finish`` carrying the counts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol


@dataclass
class GenerationJob:
    prompt_ids: list[int]
    max_tokens: int
    adapter: str | None = None          # None → the base model, adapters disabled
    temperature: float = 1.0            # 0 → greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = True                 # False: the engine may batch it with similar requests
    logprobs: int | None = None         # None: none; k: the chosen token's logprob and the k most likely
    presence_penalty: float = 0.0       # OpenAI's: minus this once a token appeared in the completion
    frequency_penalty: float = 0.0      # minus this times how often it appeared
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit

    def plain_sampling(self) -> bool:
        """True when only temperature/top_p shape the sampling (what a shared batch can do)."""
        return self.logprobs is None and not (self.presence_penalty or self.frequency_penalty or self.logit_bias)


@dataclass
class Delta:
    text: str
    logprobs: list[dict] | None = None  # one entry per token behind this text, when job.logprobs is set


@dataclass
class Finish:
    reason: str                         # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    first_token_at: float | None = None  # time.perf_counter() when the first token was generated


class ServingEngine(Protocol):
    engine_name: str
    served_model_name: str
    max_model_len: int

    def adapters(self) -> list[str]: ...
    async def load_adapter(self, name: str, path: str) -> None: ...   # APIError(400) when invalid
    async def unload_adapter(self, name: str) -> None: ...
    def encode_prompt(self, prompt: str) -> list[int]: ...
    def encode_chat(self, messages: list[dict]) -> list[int]: ...
    def stream(self, job: GenerationJob) -> AsyncIterator[Delta | Finish]: ...
