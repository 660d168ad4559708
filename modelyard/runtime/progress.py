"""Progress of a byte-moving step (download, convert, up): bytes done/total, throughput, ETA.

On a terminal it draws one line that rewrites itself; anywhere else (a pod's log) it writes JSON
lines at most once per second, the last one with ``"done": true``::

    {"event":"progress","step":"download","bytesDone":..,"bytesTotal":..,"bytesPerSecond":..,"etaSeconds":..}

The operator reads the last ``"event":"progress"`` line of the pod log. ``advance`` is
thread-safe: parallel workers call it directly.
"""
from __future__ import annotations

import collections
import json
import sys
import threading
import time

WINDOW_S = 5.0  # throughput is measured over the last few seconds


class Progress:
    def __init__(self, total_bytes: int | None = None, step: str = "download", stream=None,
                 interval: float = 1.0, already: int = 0):
        """``already``: bytes done before this run (a resumed download); counted as done but
        not as throughput."""
        self.step, self.total, self.done, self._already = step, total_bytes, already, already
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if not self.tty else min(interval, 0.2)
        self._start = time.monotonic()
        self._samples = collections.deque([(self._start, already)])
        self._last_emit = self._start - self.interval
        self._lock = threading.Lock()
        self._closed = False

    def advance(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now - self._last_emit >= self.interval:
                self._emit(now)

    def skip(self, n: int) -> None:
        """Bytes found already done (a resumed transfer): counted as done, not as throughput."""
        with self._lock:
            self.done += n
            self._already += n
            self._samples = collections.deque([(t, d + n) for t, d in self._samples])

    def set_total(self, total_bytes: int | None) -> None:
        with self._lock:
            self.total = total_bytes

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._emit(time.monotonic(), final=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._samples.append((now, self.done))
        while len(self._samples) > 2 and now - self._samples[1][0] > WINDOW_S:
            self._samples.popleft()
        t0, d0 = self._samples[0]
        return (self.done - d0) / (now - t0) if now > t0 else 0.0

    def _emit(self, now: float, final: bool = False) -> None:
        self._last_emit = now
        rate = self.rate(now)
        if final and now > self._start:  # the whole run's average is the honest number at the end
            rate = (self.done - self._already) / (now - self._start)
        eta = None
        if self.total is not None and rate > 0:
            eta = round(max(self.total - self.done, 0) / rate, 1)
        if final:
            eta = 0.0
        if self.tty:
            self._draw(rate, eta, final)
        else:
            record = {"event": "progress", "step": self.step, "bytesDone": self.done,
                      "bytesTotal": self.total, "bytesPerSecond": int(rate), "etaSeconds": eta}
            if final:
                record["done"] = True
            self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()

    def _draw(self, rate: float, eta: float | None, final: bool) -> None:
        width = 30
        frac = min(self.done / self.total, 1.0) if self.total else 0.0
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        total = human_bytes(self.total) if self.total is not None else "?"
        eta_s = f"{eta:.0f}s" if eta is not None else "?"
        line = (f"\r{self.step} [{bar}] {frac * 100:5.1f}% {human_bytes(self.done)}/{total} "
                f"{human_bytes(rate)}/s ETA {eta_s}")
        self.stream.write(line + ("\n" if final else ""))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}TiB"
