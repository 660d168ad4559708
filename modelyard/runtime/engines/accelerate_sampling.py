"""OpenAI sampling settings ``generate()`` has no flag for, as logits processors.

- ``LogprobRecorder`` (first in the list, so it sees the model's raw logits, like vLLM's default
  ``raw_logprobs``) keeps the last step's log-probabilities; the streamer asks it for the chosen
  token's entry (``token``, ``logprob``, ``bytes``, ``top_logprobs``) right after sampling.
- ``OpenAIPenalties``: ``presence_penalty`` / ``frequency_penalty`` as OpenAI defines them
  (subtracted from the logits of tokens already in the completion, not the prompt), which is not
  transformers' multiplicative ``repetition_penalty``.
- ``LogitBias``: ``logit_bias`` added to the named token ids.
"""
from __future__ import annotations

from transformers import LogitsProcessor


class LogprobRecorder(LogitsProcessor):
    def __init__(self, tokenizer, top: int):
        self.tokenizer, self.top = tokenizer, top
        self.last = None  # log-probabilities of the step being sampled, shape (vocab,)

    def __call__(self, input_ids, scores):
        import torch

        self.last = torch.log_softmax(scores[0].float(), dim=-1)
        return scores

    def _item(self, tok: int, lp: float) -> dict:
        text = self.tokenizer.decode([tok])
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

    def entry(self, tok: int) -> dict:
        out = self._item(tok, float(self.last[tok]))
        tops = []
        if self.top:
            values, ids = self.last.topk(self.top)
            tops = [self._item(int(i), float(v)) for v, i in zip(values.tolist(), ids.tolist())]
        return {**out, "top_logprobs": tops}


class OpenAIPenalties(LogitsProcessor):
    def __init__(self, prompt_len: int, presence: float, frequency: float):
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids, scores):
        import torch

        generated = input_ids[:, self.prompt_len:]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores)
        counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class LogitBias(LogitsProcessor):
    def __init__(self, bias: dict[int, float]):
        self.bias = bias

    def __call__(self, input_ids, scores):
        vocab = scores.shape[-1]
        for tok, b in self.bias.items():
            if 0 <= tok < vocab:
                scores[:, tok] += b
        return scores


def processors(job, tokenizer) -> tuple[list, LogprobRecorder | None]:
    """The processors for ``job`` (recorder first: raw logits) and the recorder, if any."""
    recorder = LogprobRecorder(tokenizer, job.logprobs) if job.logprobs is not None else None
    out: list = [recorder] if recorder else []
    if job.presence_penalty or job.frequency_penalty:
        out.append(OpenAIPenalties(len(job.prompt_ids), job.presence_penalty, job.frequency_penalty))
    if job.logit_bias:
        out.append(LogitBias(job.logit_bias))
    return out, recorder
