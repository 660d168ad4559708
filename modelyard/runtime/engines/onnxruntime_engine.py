"""The onnxruntime engine's generation loop: one thread owns an ``og.Engine`` (onnxruntime-genai's
continuous batching) and feeds it requests; asyncio consumers get their text through queues.

Every request becomes one ``og.Request`` with one turn. The thread adds new requests and cancels
abandoned ones between ``Engine.run`` steps, so a request that arrives while others are generating
joins the running batch (up to ``max_batch``) instead of waiting for them to finish. A client that
goes away cancels its turn at the next step. Stop strings are applied here, on the decoded text,
because onnxruntime-genai applies them only with paged attention (CUDA); the same goes for seeds,
which is why a seeded sampling request is refused (``check_job``).
"""
from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from modelyard.runtime.engines.onnxruntime_text import TextStream
from modelyard.runtime.server.engine import Delta, Finish, GenerationJob
from modelyard.runtime.server.errors import APIError

END = object()
_LENGTH = {"MAX_GENERATED_TOKENS", "MAX_SESSION_TOKENS"}


@dataclass
class Live:
    """One request in flight: what the generation thread and its asyncio consumer share."""

    job: GenerationJob
    loop: Any
    out: asyncio.Queue
    text: TextStream
    request: Any = None
    turn: int = 0
    reason: str | None = None          # set once the turn is over: "stop" | "length" | "cancelled"
    error: str | None = None
    first_token_at: float | None = None
    abandoned: bool = False
    usage: dict = field(default_factory=dict)

    def send(self, item) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


class OrtEngine:
    engine_name = "onnxruntime"

    def __init__(self, model_dir: str, served_model_name: str, cuda: bool, max_batch: int,
                 max_model_len: int | None = None, trust_remote_code: bool = False):
        self.model_dir, self.served_model_name, self.cuda = model_dir, served_model_name, cuda
        self.trust_remote_code = trust_remote_code  # the tokenizer's code only: the graph runs no Python
        self.max_batch, self.requested_len = max_batch, max_model_len
        self.max_model_len = max_model_len or 0
        self.on_step: Callable[[int], None] = lambda size: None
        self.on_abandoned: Callable[[str, int, int], None] = lambda model, prompt, generated: None
        self._inbox: queue.Queue = queue.Queue()
        self._live: dict[int, Live] = {}

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> None:
        """Load the tokenizer here and the model on the generation thread (og.Engine is bound to the
        thread that made it); return once it is ready, or raise what went wrong."""
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, trust_remote_code=self.trust_remote_code)
        genai = json.loads((Path(self.model_dir) / "genai_config.json").read_text())["model"]
        self.vocab_size = int(genai.get("vocab_size") or len(self.tokenizer))
        context = int(genai.get("context_length") or 0)
        if self.requested_len and context and self.requested_len > context:
            raise ValueError(f"--max-model-len {self.requested_len} is above the export's context_length {context}")
        self.max_model_len = self.requested_len or context or 2048
        loaded: queue.Queue = queue.Queue()
        threading.Thread(target=self._serve, args=(loaded,), name="generate", daemon=True).start()
        error = loaded.get()
        if error is not None:
            raise error

    def _make_engine(self):
        import onnxruntime_genai as og

        config = og.Config(self.model_dir)
        config.overlay(json.dumps({"engine": {"static_batching": {"max_batch_size": self.max_batch}},
                                   # the KV buffer is max_batch × max_length tokens: size it to what we serve
                                   "search": {"num_beams": 1, "min_length": 0, "max_length": self.max_model_len}}))
        if self.cuda:
            config.clear_providers()
            config.append_provider("cuda")
        self.model = og.Model(config)
        return og.Engine(self.model)

    # -- the HTTP layer's interface -----------------------------------------------------------
    def adapters(self) -> list[str]:
        return []

    async def load_adapter(self, name: str, path: str) -> None:
        raise APIError(400, "the onnxruntime engine serves no separate LoRA adapters: merge the adapter at "
                       "export (spec.adapters[].merge: true, or modelyard convert --merge-adapter DIR)",
                       param="lora_path", code="adapters_unsupported")

    async def unload_adapter(self, name: str) -> None:
        raise APIError(404, f"The lora adapter '{name}' cannot be found.", type="not_found_error",
                       param="lora_name", code="adapter_not_found")

    def encode_prompt(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt)["input_ids"])

    def encode_chat(self, messages: list[dict]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise APIError(400, "This model's tokenizer has no chat template; use /v1/completions.", param="messages")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @staticmethod
    def check_job(job: GenerationJob) -> None:
        """Refuse (400, naming the field) what this engine cannot honour, before anything is queued:
        onnxruntime-genai's Engine reports chosen tokens only (no logprobs), has no additive
        penalties nor logit bias, and takes a per-request seed only with paged attention (CUDA)."""
        if job.adapter is not None:
            raise APIError(404, f"The model `{job.adapter}` does not exist.", param="model", code="model_not_found")
        refused = [("logprobs", job.logprobs is not None), ("presence_penalty", bool(job.presence_penalty)),
                   ("frequency_penalty", bool(job.frequency_penalty)), ("logit_bias", bool(job.logit_bias)),
                   ("seed", job.seed is not None and job.temperature > 0)]
        for name, asked in refused:
            if asked:
                raise APIError(400, f"{name} is not supported by the onnxruntime engine (onnxruntime-genai's "
                               f"Engine cannot honour it on this model); leave it out"
                               + (" or use temperature 0" if name == "seed" else ""),
                               param=name, code="unsupported_parameter")

    async def stream(self, job: GenerationJob):
        self.check_job(job)
        loop = asyncio.get_running_loop()
        live = Live(job=job, loop=loop, out=asyncio.Queue(), text=TextStream(self.tokenizer, job.stop))
        self._inbox.put(("add", live))
        try:
            while (item := await live.out.get()) is not END:
                yield Delta(item)
        finally:
            if live.reason is None:
                self._inbox.put(("cancel", live))
        if live.error:
            raise RuntimeError(live.error)
        yield Finish(reason=live.reason if live.reason != "cancelled" else "stop",
                     prompt_tokens=len(job.prompt_ids), completion_tokens=len(live.text.ids),
                     first_token_at=live.first_token_at)

    # -- the generation thread ---------------------------------------------------------------
    def _serve(self, loaded: queue.Queue) -> None:
        try:
            self.engine = self._make_engine()
            buffer = self.engine.create_event_buffer(max(64, 4 * self.max_batch))
        except Exception as exc:
            loaded.put(exc)
            return
        loaded.put(None)
        while True:
            self._take_inbox(block=not self.engine.has_pending_requests())
            if not self.engine.has_pending_requests():
                continue
            self.on_step(len(self._live))
            try:
                events = self.engine.run(buffer)
            except Exception as exc:  # every waiting request hears why
                self._fail_all(f"onnxruntime-genai failed: {exc}")
                continue
            for i in range(len(events)):
                self._event(events[i])

    def _take_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(block=block)
        except queue.Empty:
            return
        while True:
            verb, live = item
            self._add(live) if verb == "add" else self._cancel(live)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _add(self, live: Live) -> None:
        import numpy as np
        import onnxruntime_genai as og

        try:
            request = self.engine.create_request()
            options = og.TurnOptions(request)
            options.set_max_generated_tokens(live.job.max_tokens)
            if live.job.temperature == 0:
                options.set_do_sample(False)
            else:
                options.set_do_sample(True)
                options.set_temperature(live.job.temperature)
                options.set_top_p(live.job.top_p)
                options.set_top_k(self.vocab_size)  # OpenAI has no top_k: sample from the whole vocabulary
            live.turn = request.begin_turn(np.asarray(live.job.prompt_ids, dtype=np.int32), options)
        except Exception as exc:
            live.reason, live.error = "stop", f"onnxruntime-genai refused the request: {exc}"
            live.send(END)
            return
        live.request = request
        self._live[id(request)] = live

    def _cancel(self, live: Live) -> None:
        """The consumer went away: end its turn now and count what was computed."""
        if live.reason is not None or live.request is None:
            return
        live.reason, live.abandoned = "cancelled", True
        self._close(live)
        self.on_abandoned(self.served_model_name, len(live.job.prompt_ids), len(live.text.ids))

    def _close(self, live: Live) -> None:
        self._live.pop(id(live.request), None)
        try:
            live.request.cancel_turn(live.turn)
        except Exception:
            pass  # already finished
        live.request.close()

    def _event(self, ev) -> None:
        import onnxruntime_genai as og

        live = self._live.get(id(ev.request))
        if live is None or live.reason is not None:
            return
        flags = int(ev.flags.value)
        if flags & int(og.EngineEventFlags.TOKEN.value):
            if live.first_token_at is None:
                live.first_token_at = time.perf_counter()
            piece = live.text.push(ev.token)
            if piece:
                live.send(piece)
            if live.text.stopped:
                self._finish(live, "stop")
                return
        if flags & int(og.EngineEventFlags.FAILED.value):
            live.error = f"onnxruntime-genai failed the request ({ev.error_code.name})"
            self._finish(live, "stop")
        elif flags & int(og.EngineEventFlags.TURN_FINISHED.value):
            self._finish(live, "length" if ev.finish_reason.name in _LENGTH else "stop")

    def _finish(self, live: Live, reason: str) -> None:
        live.reason = reason
        piece = live.text.flush()
        if piece:
            live.send(piece)
        self._close(live)
        live.send(END)

    def _fail_all(self, message: str) -> None:
        for live in list(self._live.values()):
            live.error = message
            self._finish(live, "stop")
