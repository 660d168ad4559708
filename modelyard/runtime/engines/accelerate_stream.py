"""Bridges ``model.generate`` (running in a worker thread) to an asyncio consumer.

``QueueStreamer`` is a transformers ``BaseStreamer`` like ``TextIteratorStreamer``, but it also
keeps the generated token ids (usage counts) and, when asked, each token's logprob entry, applies OpenAI ``stop`` strings (holding back text
that could be the start of one), and hands text to an ``asyncio.Queue`` without blocking the event
loop. ``StopFlag`` ends generation early when a stop string matched or the client went away.
"""
from __future__ import annotations

import asyncio
import time

from transformers.generation.streamers import BaseStreamer
from transformers.generation.stopping_criteria import StoppingCriteria

END = object()


class QueueStreamer(BaseStreamer):
    def __init__(self, tokenizer, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, stop: list[str],
                 recorder=None):
        self.tokenizer, self.loop, self.queue, self.stop = tokenizer, loop, queue, stop
        self.recorder = recorder           # LogprobRecorder when the job asked for logprobs
        self.entries: list[dict] = []      # logprob entries not yet handed over with text
        self.processors: list = []         # logits processors generate() runs for this job
        self.ids: list[int] = []
        self.sent = 0                      # characters already handed to the consumer
        self.stopped = False               # a stop string matched
        self.cancelled = False             # the consumer went away
        self.first_token_at: float | None = None
        self.token_times: list[float] = []  # perf_counter() of each generated token (inter-token latency)
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:          # generate() first puts the prompt
            self._prompt_seen = True
            return
        self.token_times.append(time.perf_counter())
        if self.first_token_at is None:
            self.first_token_at = self.token_times[0]
        new = [int(x) for x in value.reshape(-1).tolist()]
        self.ids.extend(new)
        if self.recorder is not None and not self.stopped:
            self.entries.extend(self.recorder.entry(t) for t in new)
        self._emit(final=False)

    def take_all(self, ids: list[int]) -> None:
        """A whole generation at once (a batch row): cut at the first stop string, count to there."""
        if self.stop:
            lo, hi = 1, len(ids)
            if hi and self._has_stop(ids[:hi]):
                while lo < hi:  # the shortest prefix whose text holds a stop string
                    mid = (lo + hi) // 2
                    lo, hi = (lo, mid) if self._has_stop(ids[:mid]) else (mid + 1, hi)
                ids = ids[:lo]
        self.ids = list(ids)

    def _has_stop(self, ids: list[int]) -> bool:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return any(s in text for s in self.stop)

    def end(self) -> None:
        pass  # finish() is called by the engine in all cases, even when generate() raised

    def finish(self) -> None:
        self._emit(final=True)
        if self.entries:
            self._push(("", self._take_entries()))
        self._push(END)

    def _take_entries(self) -> list[dict] | None:
        if self.recorder is None:
            return None
        out, self.entries = self.entries, []
        return out

    def _push(self, item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def _safe_end(self, text: str) -> int:
        """How much of ``text`` can be sent now: not a half-decoded character nor a stop prefix."""
        end = len(text)
        while end > self.sent and text[end - 1] == "\ufffd":
            end -= 1
        for s in self.stop:
            for k in range(min(len(s) - 1, end), 0, -1):
                if text[:end].endswith(s[:k]):
                    end = min(end, len(text[:end]) - k)
                    break
        return max(end, self.sent)

    def _emit(self, final: bool) -> None:
        if self.stopped:
            return
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            text, self.stopped, end = text[: min(hits)], True, min(hits)
        else:
            end = len(text) if final else self._safe_end(text)
        if end > self.sent:
            self._push((text[self.sent:end], self._take_entries()))
            self.sent = end


class StopFlag(StoppingCriteria):
    def __init__(self, streamer: QueueStreamer):
        self.streamer = streamer

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        flag = self.streamer.stopped or self.streamer.cancelled
        return torch.full((input_ids.shape[0],), flag, dtype=torch.bool, device=input_ids.device)
