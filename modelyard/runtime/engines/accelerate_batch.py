"""The accelerate engine's single generation thread and its batching.

Everything that touches the model (generation, adapter load/unload) goes through one
``WorkQueue`` served by one thread, so nothing races. When the thread picks a non-streaming
request, it also takes every queued non-streaming request with the same adapter and sampling
settings (and no seed, logprobs or penalties), up to ``MAX_BATCH``, and runs them as one left-padded ``generate`` call.
Streaming and seeded requests run alone, in arrival order.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

MAX_BATCH = 8


@dataclass
class Work:
    loop: Any                       # the asyncio loop waiting for the result
    done: Any                       # asyncio.Future resolved with the result or the exception
    fn: Callable | None = None      # a call (adapter load/unload)
    args: tuple = ()
    job: Any = None                 # or a generation
    streamer: Any = None
    key: tuple | None = field(default=None)  # batch key; None = runs alone

    def resolve(self, result=None, error: BaseException | None = None) -> None:
        def _set():
            if not self.done.done():
                self.done.set_exception(error) if error else self.done.set_result(result)
        self.loop.call_soon_threadsafe(_set)


def batch_key(job) -> tuple | None:
    if job.stream or job.seed is not None or not job.plain_sampling():
        return None
    sampling = ("greedy",) if job.temperature == 0 else (job.temperature, job.top_p)
    return (job.adapter, *sampling)


class WorkQueue:
    def __init__(self):
        self._items: collections.deque[Work] = collections.deque()
        self._cv = threading.Condition()
        self._running = 0  # batches taken and not yet done()

    def idle(self) -> bool:
        """Nothing queued and nothing running on the generation thread."""
        with self._cv:
            return not self._items and self._running == 0

    def done(self) -> None:
        with self._cv:
            self._running -= 1

    def put(self, work: Work) -> None:
        with self._cv:
            self._items.append(work)
            self._cv.notify()

    def take(self, max_batch: int = MAX_BATCH) -> list[Work]:
        """The oldest item, plus queued items with the same (non-None) batch key."""
        with self._cv:
            while not self._items:
                self._cv.wait()
            first = self._items.popleft()
            batch, skipped = [first], []
            while first.key is not None and self._items and len(batch) < max_batch:
                item = self._items.popleft()
                (batch if item.key == first.key else skipped).append(item)
            self._items.extendleft(reversed(skipped))
            self._running += 1
            return batch


class FirstToken:
    """A batch-capable streamer that only notes when the first new tokens came out."""

    def __init__(self):
        self.at: float | None = None
        self.times: list[float] = []  # when each step's tokens came out (the same for every row)
        self._calls = 0

    def put(self, value) -> None:
        self._calls += 1
        if self._calls >= 2:  # the first put is the prompt
            self.times.append(time.perf_counter())
            self.at = self.at or self.times[0]

    def end(self) -> None:
        pass


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    width = max(len(p) for p in prompts)
    ids = [[pad_id] * (width - len(p)) + p for p in prompts]
    mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
    return ids, mask


def trim(generated: list[int], max_tokens: int, eos_ids: set[int]) -> list[int]:
    """A batch row's own tokens: up to its first end-of-sequence (kept) and its own max_tokens."""
    out = generated[:max_tokens]
    for i, tok in enumerate(out):
        if tok in eos_ids:
            return out[: i + 1]
    return out
