"""OpenAI response bodies and SSE chunks for completions and chat completions, with ``n`` choices
and per-token logprobs (chat's ``{"content": [...]}`` shape; the completions API's legacy
``tokens``/``token_logprobs``/``top_logprobs``/``text_offset`` shape)."""
from __future__ import annotations

import time


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_logprobs(entries: list[dict] | None) -> dict | None:
    return None if entries is None else {"content": entries, "refusal": None}


def completion_logprobs(entries: list[dict] | None, offset: int = 0) -> dict | None:
    if entries is None:
        return None
    offsets, at = [], offset
    for e in entries:
        offsets.append(at)
        at += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": offsets}


def _head(rid: str, model: str, obj: str) -> dict:
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model}


def chat_body(rid: str, model: str, choices: list[tuple[str, str, list | None]], use: dict) -> dict:
    """``choices``: (text, finish_reason, logprob entries or None) per index."""
    return {**_head(rid, model, "chat.completion"), "choices": [
        {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": chat_logprobs(lp),
         "finish_reason": reason} for i, (text, reason, lp) in enumerate(choices)], "usage": use}


def completion_body(rid: str, model: str, choices: list[tuple[str, str, list | None]], use: dict) -> dict:
    return {**_head(rid, model, "text_completion"), "choices": [
        {"index": i, "text": text, "logprobs": completion_logprobs(lp), "finish_reason": reason}
        for i, (text, reason, lp) in enumerate(choices)], "usage": use}


def chat_chunk(rid: str, model: str, index: int, delta: dict, reason: str | None = None,
               entries: list | None = None) -> dict:
    return {**_head(rid, model, "chat.completion.chunk"), "choices": [
        {"index": index, "delta": delta, "logprobs": chat_logprobs(entries), "finish_reason": reason}]}


def completion_chunk(rid: str, model: str, index: int, text: str, reason: str | None = None,
                     entries: list | None = None, offset: int = 0) -> dict:
    return {**_head(rid, model, "text_completion"), "choices": [
        {"index": index, "text": text, "logprobs": completion_logprobs(entries, offset), "finish_reason": reason}]}


def usage_chunk(rid: str, model: str, obj: str, use: dict) -> dict:
    return {**_head(rid, model, obj), "choices": [], "usage": use}
