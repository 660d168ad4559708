"""OpenAI request bodies and the response/chunk builders for completions and chat completions.

Honest surface: every field is either honoured by the accelerate engine or refused with 400
naming it (unknown fields too); nothing is accepted and ignored."""
from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_N = 16
MAX_LOGPROBS = 20


class _Strict(BaseModel):
    """Unknown fields are refused (400 naming the field), never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


def _refuse(field: str, value, allowed=(None,), why: str = "") -> None:
    if value not in allowed:
        raise ValueError(f"not supported by the accelerate engine{': ' + why if why else ''}")


class _Sampling(_Strict):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[int, float] | None = None

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, v):
        if v and any(not -100 <= b <= 100 for b in v.values()):
            raise ValueError("biases must be between -100 and 100")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(_Sampling):
    prompt: Prompt
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("at least one prompt is needed")
        return v

    @field_validator("echo")
    @classmethod
    def _echo(cls, v):
        return _refuse("echo", v, (False,), "the completion never repeats the prompt") or v

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, v):
        return _refuse("best_of", v, (None, 1), "use n for several completions") or v

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, v):
        return _refuse("suffix", v, (None,), "no insertion mode") or v

    def prompts(self) -> list[str | list[int]]:
        """Each prompt as text or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)

    def top_logprobs(self) -> int | None:
        return self.logprobs


class TextPart(_Strict):
    type: Literal["text"] = "text"
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = ""
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""

    def for_template(self) -> dict:
        out = {"role": self.role, "content": self.text()}
        return {**out, "name": self.name} if self.name else out


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    response_format: dict | None = None
    tools: list | None = None
    tool_choice: str | dict | None = None

    @field_validator("response_format")
    @classmethod
    def _format(cls, v):
        if v is not None and v.get("type") != "text":
            _refuse("response_format", v, (), "only {'type': 'text'}; JSON output is not enforced by this "
                    "engine (the vllm engine enforces it)")
        return v

    @field_validator("tools")
    @classmethod
    def _tools(cls, v):
        return _refuse("tools", v or None, (None,), "no tool calling (the vllm engine has it)") or v

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, v):
        return _refuse("tool_choice", v, (None, "none"), "no tool calling") or v

    @model_validator(mode="after")
    def _top_needs_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def top_count(self) -> int | None:
        """None: no logprobs; else how many alternatives per token."""
        return (self.top_logprobs or 0) if self.logprobs else None


class LoadAdapterRequest(BaseModel):
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)


class UnloadAdapterRequest(BaseModel):
    lora_name: str = Field(min_length=1)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def model_list(names: list[str], owner: str, root: str, base: str) -> dict:
    created = int(time.time())
    return {"object": "list", "data": [
        {"id": n, "object": "model", "created": created, "owned_by": owner,
         "root": root if n == base else n, "parent": None if n == base else base}
        for n in names]}
