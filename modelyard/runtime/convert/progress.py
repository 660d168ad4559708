"""Progress for the convert step: ``modelyard.runtime.progress.Progress`` when present, else the
same JSON lines on stderr (``{"event":"progress","step":"convert",...}``), throttled."""
from __future__ import annotations

import json
import sys
import time


def make_progress(total_bytes: int):
    try:
        from modelyard.runtime.progress import Progress  # shared with downloads
    except ImportError:
        return JsonProgress(total_bytes)
    return Progress(total_bytes, step="convert")


class JsonProgress:
    def __init__(self, total_bytes: int, step: str = "convert", every_s: float = 1.0, stream=None):
        self.total, self.step, self.every = total_bytes, step, every_s
        self.done = 0
        self.stream = stream or sys.stderr
        self.start = self._last = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._emit(now)

    def close(self) -> None:
        self._emit(time.monotonic())

    def _emit(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else None
        line = {"event": "progress", "step": self.step, "bytesDone": self.done, "bytesTotal": self.total,
                "bytesPerSecond": round(rate), "etaSeconds": None if eta is None else round(eta, 1)}
        print(json.dumps(line), file=self.stream, flush=True)
