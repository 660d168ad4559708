"""Token ids → text pieces for one request of the onnxruntime engine, with OpenAI ``stop`` strings.

The same rules as the accelerate engine's streamer, without transformers' streamer classes (the
onnxruntime serve image carries no torch): the whole generation is decoded each time so
multi-token characters come out whole; text that could be the start of a stop string is held
back; a stop string ends the text just before it.
"""
from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.ids: list[int] = []
        self.sent = 0          # characters already handed out
        self.stopped = False   # a stop string matched: nothing more is handed out

    def push(self, token: int) -> str:
        """Add one generated token; the text that may be sent now (possibly empty)."""
        self.ids.append(int(token))
        return self._emit(final=False)

    def flush(self) -> str:
        """The generation ended: whatever was held back (except a partial stop string's match)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        if self.stopped:
            return ""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped, end = True, min(hits)
        else:
            end = len(text) if final else self._safe_end(text)
        if end <= self.sent:
            return ""
        piece, self.sent = text[self.sent:end], end
        return piece

    def _safe_end(self, text: str) -> int:
        """How much of ``text`` can be sent now: not a half-decoded character nor a stop prefix."""
        end = len(text)
        while end > self.sent and text[end - 1] == "\ufffd":
            end -= 1
        for s in self.stop:
            for k in range(min(len(s) - 1, end), 0, -1):
                if text[:end].endswith(s[:k]):
                    end -= k
                    break
        return max(end, self.sent)
