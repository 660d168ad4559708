"""A lone request on CPU runs as ``model.generate`` and joins the batch when another arrives.

On CPU, transformers' paged attention costs more per step than ``generate`` with its dynamic
cache: the manager rebuilds its packed inputs and the block-diagonal mask before every forward
pass, and gathers the keys and values through the page table. For one request that is pure
overhead (the static path answers a lone request ~1.1–1.3× faster, ``docs/benchmarks.md``). But a
request served by ``generate`` holds the model until it ends, so a second request would wait for
the whole first generation.

So the continuous batcher runs a request *solo* when it is the only one: same adapter group, nothing
else admitted, nothing in the manager. When another request of the group is admitted, it asks the
solo request to hand over: ``generate`` stops at the next token (a stopping criterion), the model
gets its paged attention back, and the solo request continues *in the manager* with its prompt
plus the tokens generated so far as the new prompt (one prefill pass: vLLM's preemption by
recompute) and ``max_tokens`` minus those tokens. Greedy outputs are the same either way (the tests
compare them); a sampled request continues from the same prefix with the same settings.

On a GPU the library's kernels (flash attention with a page table, CUDA graphs) serve a lone
request well, so solo runs only where the model is on the CPU.
"""
from __future__ import annotations

import asyncio
import threading
import time

from transformers.generation.stopping_criteria import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

END = object()


class Solo:
    """One request generating alone. ``handover()`` (from another request) stops it at the next token
    and returns an awaitable that resolves once the model is back on paged attention."""

    def __init__(self):
        self.stop = threading.Event()    # a newcomer asked to share the model
        self.halt = False                # the request itself is done (stop string matched, consumer left)
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._ended = False

    def handover(self) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            if self._ended:
                fut.set_result(None)
                return fut
            self._waiters.append((loop, fut))
        self.stop.set()
        return fut

    def ended(self) -> None:
        """Called on the generation thread once ``generate`` returned and the attention is restored."""
        with self._lock:
            self._ended, waiters, self._waiters = True, self._waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_resolve, fut)


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class Halt(StoppingCriteria):
    def __init__(self, solo: Solo):
        self.solo = solo

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        flag = self.solo.halt or self.solo.stop.is_set()
        return torch.full((input_ids.shape[0],), flag, dtype=torch.bool, device=input_ids.device)


class IdStreamer(BaseStreamer):
    """``generate``'s streamer: each new token's id to the asyncio side, with its time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
        self.loop, self.queue = loop, queue
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first puts the prompt
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())
        self.loop.call_soon_threadsafe(self.queue.put_nowait, [int(x) for x in value.reshape(-1).tolist()])

    def end(self) -> None:
        pass  # close() is called in all cases, even when generate() raised

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, END)
