"""Which requests may run on the continuous-batching manager now, grouped by what the model must be.

transformers' continuous batching runs one forward pass over every admitted request, so all of
them see the same weights: the same LoRA adapter (or none), and the paged attention the manager
switched the model to. ``Admission`` therefore serves *groups* in arrival order:

- a group per adapter (``None`` = the base model) runs on the manager, as many requests at once as
  arrive; switching to another adapter waits until the running group has drained;
- the ``STATIC`` group (requests the manager cannot serve, adapter load/unload) runs with the
  manager paused, on the engine's own generation thread.

When the group at the head of the queue differs from the running one, the running group takes no
new requests (no starvation); when it drains, the head's group starts and takes every queued
request of its kind up to the next ``STATIC`` item. State is guarded by a lock because requests
may come from several event loops (tests run ``asyncio.run`` per call).
"""
from __future__ import annotations

import asyncio
import collections
import threading
from dataclasses import dataclass
from typing import Callable

STATIC = object()  # the group served with the manager paused


@dataclass
class _Waiter:
    group: object
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class Admission:
    """``async with admission.slot(group)``: wait until ``group`` may run, hold it until done.

    ``switch(old, new)`` is called (under the lock, with nothing running) whenever the running
    group changes: it selects the adapter, or pauses/resumes the manager around ``STATIC``.
    """

    def __init__(self, switch: Callable[[object, object], None]):
        self._switch = switch
        # re-entrant: a switch pauses the manager, whose stop() runs gc.collect(), which may finalize an
        # abandoned waiter right here (its cleanup takes the lock again); _switching keeps that from
        # starting a second switch
        self._lock = threading.RLock()
        self._switching = False
        self._queue: collections.deque[_Waiter] = collections.deque()
        self.current: object = None      # the group the model is set up for
        self.running = 0                 # admitted requests of ``current`` not yet released
        self.switches = 0

    def alone(self) -> bool:
        """One request admitted and none waiting."""
        with self._lock:
            return self.running == 1 and not self._queue

    def slot(self, group) -> "_Slot":
        return _Slot(self, group)

    async def acquire(self, group) -> None:
        loop = asyncio.get_running_loop()
        waiter = _Waiter(group, loop, loop.create_future())
        with self._lock:
            self._queue.append(waiter)
            self._pump()
        try:
            await waiter.future
        except BaseException:
            with self._lock:
                if waiter in self._queue:        # cancelled while queued: just leave
                    self._queue.remove(waiter)
                    self._pump()
                    raise
            self.release()                       # cancelled after being admitted
            raise

    def release(self) -> None:
        with self._lock:
            self.running -= 1
            self._pump()

    def _admit(self, waiter: _Waiter) -> None:
        if waiter not in self._queue:
            return
        self._queue.remove(waiter)
        self.running += 1

        def _set():
            if not waiter.future.done():
                waiter.future.set_result(None)
        waiter.loop.call_soon_threadsafe(_set)

    def _pump(self) -> None:
        if self._switching or not self._queue:
            return
        head = self._queue[0]
        if self.running == 0 and not _same(head.group, self.current):
            self._switching = True
            try:
                self._switch(self.current, head.group)
            finally:
                self._switching = False
            self.current, self.switches = head.group, self.switches + 1
            for waiter in list(self._queue):     # the new group takes all its queued requests
                if waiter.group is STATIC and head.group is not STATIC:
                    break
                if _same(waiter.group, head.group):
                    self._admit(waiter)
            return
        while self._queue and _same(self._queue[0].group, self.current):
            self._admit(self._queue[0])


def _same(a, b) -> bool:
    return a is b or (isinstance(a, str) and a == b)


class _Slot:
    def __init__(self, admission: Admission, group):
        self.admission, self.group = admission, group

    async def __aenter__(self):
        await self.admission.acquire(self.group)
        return self

    async def __aexit__(self, *exc):
        self.admission.release()
        return False
