"""Continuous batching for the accelerate engine with transformers' own scheduler
(``model.init_continuous_batching()``: paged attention, the manager ``transformers serve
--continuous-batching`` uses).

What the library does per request, and what this module adds around it:

- ``max_new_tokens`` and end-of-sequence ids: the library's, per request.
- temperature / top_p: the library's per-request logits processors
  (``ContinuousBatchingConfig(per_request_processors=True)``). Sampling on/off is one switch for
  the whole manager, so the manager always samples and a greedy request asks for ``top_k=1``
  (only the argmax survives: the same token greedy decoding picks).
- stop strings: checked here on the decoded text as tokens stream out; on a match the request is
  cancelled in the manager (``cancel_request``) so it stops using the batch.
- cancellation on disconnect: the same ``cancel_request`` when the consumer goes away.
- LoRA adapters: requests for the base model and plain LoRA adapters share forward passes, each
  token with its own adapter (``accelerate_multilora``: PEFT's mixed batch); adapters PEFT cannot
  mix (DoRA), or all adapters when the manager replays CUDA graphs, are *grouped per adapter*
  (``accelerate_admit.Admission``): a request for another group waits until the running group
  drains, then its group runs.
- a lone request on CPU runs as ``generate`` and hands over to the manager when another arrives
  (``accelerate_solo``).
- anything else a request asks for that the manager cannot honour (a seed for sampled output —
  the manager has one random generator for all requests — and any GenerationJob field this module
  does not know, such as logprobs or penalties) runs on the static path: once the manager is idle
  (nothing admitted, nothing scheduled) the model's own attention is switched back and the
  engine's own ``generate`` serves it.

Where continuous batching cannot apply to the model at all (weights split over devices by
``device_map`` — CPU/disk offload —, no ``init_continuous_batching``, or a probe request failing,
e.g. a quantization the paged kernels refuse), ``start`` returns None and a reason: the engine
keeps its static batching and says so in its log and in ``modelyard_engine_batching_info``.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import sys
import threading
import time

from modelyard.runtime.engines.accelerate_admit import STATIC, Admission
from modelyard.runtime.engines import accelerate_multilora as multilora
from modelyard.runtime.engines.accelerate_batch import Work
from modelyard.runtime.engines.accelerate_solo import END, Halt, IdStreamer, Solo
from modelyard.runtime.engines.accelerate_stream import QueueStreamer
from modelyard.runtime.server.engine import Delta, Finish, GenerationJob

CONTINUOUS, STATIC_MODE = "continuous", "static"
MODES = ("auto", CONTINUOUS, STATIC_MODE)
# GenerationJob fields the manager serves; a job setting any other field to a non-default value
# goes to the static path (so features added to GenerationJob later stay correct by construction).
SERVED_FIELDS = {"prompt_ids", "max_tokens", "adapter", "temperature", "top_p", "stop", "seed", "stream"}
CPU_KV_CACHE_BYTES = 256 << 20      # paged KV cache on CPU (the library's default would take 80% of RAM)
CPU_MAX_BATCH_TOKENS = 1024


class BatchingConfigError(ValueError):
    """--batching continuous was asked for but cannot apply; the message says why."""


def unsupported_reason(model) -> str | None:
    """Why transformers' continuous batching cannot serve this loaded model, or None."""
    if not hasattr(model, "init_continuous_batching"):
        return f"{type(model).__name__} has no continuous batching in transformers"
    placed = {str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()}
    if len(placed) > 1:
        return (f"weights are split over {sorted(placed)} by device_map (offload); the paged KV cache "
                f"needs the whole model on one device")
    return None


def static_reason(job: GenerationJob) -> str | None:
    """Why this request must run on the static path, or None."""
    if job.seed is not None and job.temperature > 0:
        return "seed"
    for f in dataclasses.fields(job):
        if f.name in SERVED_FIELDS:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if getattr(job, f.name) != default:
            return f.name
    return None


def cb_config(model):
    """The manager's sizing: the library's own on GPU; on CPU a bounded paged cache."""
    from transformers import ContinuousBatchingConfig

    if model.device.type != "cpu":
        return ContinuousBatchingConfig(per_request_processors=True, use_async_batching=False)
    cfg = model.config.get_text_config()
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    per_token = 2 * cfg.num_hidden_layers * heads * head_dim * model.dtype.itemsize
    block = 32
    return ContinuousBatchingConfig(per_request_processors=True, use_async_batching=False, block_size=block,
                                    num_blocks=max(16, CPU_KV_CACHE_BYTES // (per_token * block)),
                                    max_batch_tokens=CPU_MAX_BATCH_TOKENS, use_cuda_graph=False)


def _generation_config(model, eos: list[int]):
    import copy

    gen = copy.deepcopy(model.generation_config)
    # non-default values so the library creates the per-request processors; every request sets its own
    gen.do_sample, gen.temperature, gen.top_k, gen.top_p = True, 0.7, 50, 0.9
    gen.eos_token_id = eos
    return gen


def sampling_kwargs(job: GenerationJob, vocab: int) -> dict:
    if job.temperature == 0:
        return {"temperature": 1.0, "top_k": 1, "top_p": 1.0}
    return {"temperature": float(job.temperature), "top_k": int(vocab), "top_p": float(job.top_p)}


def greedy_fast_path(manager) -> bool:
    """When every row of a forward pass is greedy (top_k=1), skip the sampling processors' sorts and
    keep only each row's argmax (what top_k=1 keeps). Not while a CUDA graph is being captured:
    a graph replays the full per-request path, which gives the same tokens."""
    from transformers.generation.continuous_batching import cb_logits_processors as cbl

    lp = manager.logit_processor
    rows = [p for p in lp.logits_processor if isinstance(p, cbl.ContinuousBatchingLogitsProcessor)]
    top_k = [i for i, p in enumerate(rows) if isinstance(p, cbl.ContinuousBatchingTopKLogitsWarper)]
    if type(lp) is not cbl.ContinuousBatchingLogitsProcessorList or len(rows) != len(lp.logits_processor) or not top_k:
        return False
    lp.__class__ = type("GreedyAwareLogitsProcessorList", (type(lp),),
                        {"__call__": _greedy_aware_call, "prepare_tensor_args": _greedy_aware_prepare})
    lp.top_k_row, lp.all_greedy, lp.argmax_sampler = top_k[0], False, False
    return True


def greedy_argmax_sampler(manager) -> bool:
    """With ``greedy_fast_path`` in place: a forward pass whose rows are all greedy takes each row's
    argmax of the raw logits, without the softmax + multinomial draw over the whole vocabulary the
    manager (which always samples) would do, and without preparing the rows' sampling arguments
    (the batch is known to be greedy from its requests when it is built); any other pass samples
    as the library does. Needs the running manager's model runner (after its first request), and
    synchronous batching (a batch is built, then run: the flag set for it is the one read)."""
    lp = manager.logit_processor
    processor = getattr(manager, "batch_processor", None)
    runner = getattr(processor, "model_runner", None)
    if (not hasattr(lp, "top_k_row") or runner is None or not callable(getattr(runner, "_sample", None))
            or getattr(processor, "use_async_batching", True)):
        return False
    library_sample = runner._sample

    def _sample(scores, output_ids) -> None:
        if lp.all_greedy and not runner.return_logprobs and not _capturing():
            next_tokens = scores[0].argmax(dim=-1)
            output_ids[0, : next_tokens.size(0)].copy_(next_tokens)
            return
        library_sample(scores, output_ids)

    runner._sample = _sample
    lp.argmax_sampler = True
    return True


def _capturing() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _greedy_aware_prepare(self, requests_in_batch, arg_storage):
    if self.argmax_sampler:  # known from the requests: skip building the arguments of an all-greedy batch
        self.all_greedy = not _capturing() and all(
            r.state.logit_processor_kwargs.get("top_k") == 1 for r in requests_in_batch if r.has_new_token)
        if self.all_greedy:
            return arg_storage
    return type(self).__mro__[1].prepare_tensor_args(self, requests_in_batch, arg_storage)


def _greedy_aware_call(self, input_ids, scores, args):
    if self.argmax_sampler:  # the batch's flag was set when it was built; the sampler takes the argmax
        return scores if self.all_greedy else type(self).__mro__[1].__call__(self, input_ids, scores, args)
    self.all_greedy = not _capturing() and bool((args[self.top_k_row, : scores.size(0)] == 1).all())
    if self.all_greedy:  # the library's draw then needs all but each row's max masked
        return scores.masked_fill(scores < scores.amax(dim=-1, keepdim=True), float("-inf"))
    return type(self).__mro__[1].__call__(self, input_ids, scores, args)


class _Text(QueueStreamer):
    """The engine's stop-string and UTF-8-safe text logic, fed token ids by this module."""

    def __init__(self, tokenizer, stop: list[str]):
        super().__init__(tokenizer, None, None, stop)
        self.pieces: list[str] = []

    def _push(self, item) -> None:
        text = item[0] if isinstance(item, tuple) else item  # (text, logprob entries) or END
        if isinstance(text, str):
            self.pieces.append(text)

    def feed(self, ids: list[int]) -> None:
        """Token by token, as the static path sees them: a stop string ends the count at the token
        that completed it, however many tokens arrived together."""
        for i in ids:
            if self.stopped:
                return
            self.ids.append(i)
            self._emit(final=False)

    def drain(self) -> list[str]:
        out, self.pieces = self.pieces, []
        return out


@dataclasses.dataclass
class _Run:
    """One request's progress: its text (token ids, stop strings) and each generated token's time."""
    text: _Text
    times: list = dataclasses.field(default_factory=list)
    first: float | None = None      # when the first token was generated (time to first token)
    rid: str = ""

    def done(self, job: GenerationJob, eos: list[int], solo: Solo | None) -> bool:
        ids = self.text.ids
        if self.text.stopped or len(ids) >= job.max_tokens or (ids and ids[-1] in eos):
            return True
        return solo is not None and not solo.stop.is_set()  # generate() ended by itself


class ContinuousBatcher:
    """One ``ContinuousBatchingManager`` over the engine's model, and the engine's static path."""

    def __init__(self, engine, manager):
        self.engine, self.manager = engine, manager
        head = engine._base().get_output_embeddings()  # top_k for "no top-k": the logits' width
        self.vocab = getattr(head, "out_features", None) or engine._base().config.get_text_config().vocab_size
        self.eos = eos_ids(engine)
        self.admission = Admission(self._switch)
        self.on_path = lambda model, path, reason: None
        self._ids = itertools.count()
        # a lone request runs as generate() on CPU (accelerate_solo); the attention each path needs
        self.cb_attn, self.static_attn = manager.model.config._attn_implementation, manager._original_attn_impl
        self.solo_enabled = manager.model.device.type == "cpu" and self.static_attn is not None
        self._solo: Solo | None = None
        self._solo_lock = threading.Lock()
        self.handovers = 0
        # requests for different adapters share forward passes (accelerate_multilora) unless it cannot apply
        self.mix_reason, self.token_adapters = multilora.applies(manager), None
        self._select(self.admission.current)  # the base model: adapters loaded before start are off
        self._count_batches(manager.batch_processor.scheduler)

    def _count_batches(self, scheduler) -> None:
        """``modelyard_batch_size`` under continuous batching: requests in each scheduled forward pass."""
        schedule = scheduler.schedule_batch

        def counted(*args, **kwargs):
            out = schedule(*args, **kwargs)
            if out[0]:
                self.engine.on_batch(len(out[0]))
                if self.token_adapters is not None:  # which adapter each packed token of this pass uses
                    self.token_adapters.plan(out[0] if self.admission.current is multilora.MIXED else None)
            return out
        scheduler.schedule_batch = counted

    # -- the model's state per group ----------------------------------------------------------
    def _switch(self, old, new) -> None:
        self._wait_idle()
        m = self.manager
        if new is STATIC:  # give the model back as loaded: its own attention, adapter layers on
            if self.static_attn is not None:
                m.model.set_attn_implementation(self.static_attn)
            if self.engine._adapters:
                self.engine.model.base_model.enable_adapter_layers()
            return
        if old is STATIC:
            m.model.set_attn_implementation(self.cb_attn)
        self._select(new)

    def _wait_idle(self, timeout: float = 120) -> None:
        """Until the manager has nothing queued or scheduled (then its thread runs no forward pass: a
        request leaves the scheduler only after its last forward) and the engine's generation thread
        runs nothing (a solo or static ``generate`` whose client left stops at its next token).
        Nothing is admitted meanwhile; this waits at most for a cancelled request's last step."""
        deadline = time.monotonic() + timeout
        while self._manager_busy() or self._solo is not None or not self.engine._work.idle():
            if time.monotonic() > deadline:
                raise RuntimeError("the continuous-batching manager did not go idle")
            time.sleep(0.001)

    def _group(self, adapter: str | None):
        """The admission group: every mixable adapter (and the base model) shares one, else per adapter."""
        if self.mix_reason is None and multilora.mixable(self.engine.model, adapter):
            return multilora.MIXED
        return adapter

    def _manager_busy(self) -> bool:
        m = self.manager
        return (not m.input_queue.empty() or not m.cancel_queue.empty()
                or m.batch_processor.scheduler.has_pending_requests())

    def _select(self, adapter) -> None:
        if not self.engine._adapters:
            return
        tuner = self.engine.model.base_model
        if adapter is multilora.MIXED:  # each token's adapter comes from its request (the pass's plan)
            if self.token_adapters is None:
                self.token_adapters = multilora.TokenAdapters(self.engine.model)
            self.token_adapters.refresh(self.engine.model)
            tuner.enable_adapter_layers()
        elif adapter is None or adapter not in self.engine._adapters:  # (an unloaded one: its requests get 404)
            tuner.disable_adapter_layers()
        else:
            tuner.enable_adapter_layers()
            self.engine.model.set_adapter(adapter)

    @contextlib.asynccontextmanager
    async def paused(self):
        async with self.admission.slot(STATIC):
            yield

    def close(self) -> None:
        self.manager.stop(block=True, timeout=10)

    # -- requests -----------------------------------------------------------------------------
    def stream(self, job: GenerationJob):
        reason = static_reason(job)
        self.on_path(job.adapter or self.engine.served_model_name, STATIC_MODE if reason else CONTINUOUS, reason or "")
        return self._static(job) if reason else self._continuous(job)

    async def _static(self, job: GenerationJob):
        async with self.admission.slot(STATIC):
            async for ev in self.engine._stream_static(job):
                yield ev

    async def _continuous(self, job: GenerationJob):
        if job.adapter is not None and job.adapter not in self.engine._adapters:
            self.engine._adapter_context(job.adapter)  # raises the 404 the static path gives
        async with self.admission.slot(self._group(job.adapter)):
            if job.adapter is not None and job.adapter not in self.engine._adapters:
                self.engine._adapter_context(job.adapter)  # unloaded while this request waited: 404
            run = _Run(_Text(self.engine.tokenizer, job.stop))
            solo = self._try_solo()
            if solo is not None:
                async for piece in self._run_solo(job, run, solo):
                    yield Delta(piece)
            else:
                await self._join_solo()
            if not run.done(job, self.eos, solo):
                async for piece in self._managed(job, run):
                    yield Delta(piece)
            if run.text.stopped and run.rid:  # a stop string matched in the manager: leave its batch
                self._cancel(run.rid)
            run.text.finish()
            for piece in run.text.drain():
                yield Delta(piece)
        self.engine.on_token_times(job.adapter or self.engine.served_model_name, run.times[:len(run.text.ids)])
        yield self._finish(job, run.text, run.first)

    async def _managed(self, job: GenerationJob, run: "_Run"):
        """The request (or what is left of it after a solo start) in the manager's batch."""
        text, before = run.text, list(run.text.ids)  # tokens generated solo are part of the prompt now
        outputs: asyncio.Queue = asyncio.Queue()
        run.rid, watch = f"my-{next(self._ids)}", bool(job.stop)
        if self.token_adapters is not None:
            self.token_adapters.by_request[run.rid] = job.adapter or multilora.BASE
        self.manager.register_result_handler(run.rid, outputs.put_nowait)
        self.manager.add_request(job.prompt_ids + before, request_id=run.rid, max_new_tokens=job.max_tokens - len(before),
                                 streaming=job.stream or watch, record_timestamps=True, eos_token_id=self.eos,
                                 **sampling_kwargs(job, self.vocab))
        finished, solo_times = False, run.times
        try:
            while not finished:
                out = await outputs.get()
                if out.error is not None:
                    raise RuntimeError(f"continuous batching failed: {out.error}")
                ids = before + list(out.generated_tokens)
                if out.timestamps:
                    run.times = solo_times + list(out.timestamps)
                if run.first is None and len(ids) > len(before):
                    run.first = run.times[0] if run.times else time.perf_counter()
                if out.is_finished() and not watch:
                    text.take_all(ids)
                else:
                    text.feed(ids[len(text.ids):])
                finished = out.is_finished() or text.stopped
                for piece in text.drain():
                    yield piece
        finally:
            if not finished:  # the consumer went away (or failed): free the batch slot now
                self._cancel(run.rid)
                self._abandoned(job, run)
            if self.token_adapters is not None:
                self.token_adapters.by_request.pop(run.rid, None)

    # -- a lone request (accelerate_solo) -----------------------------------------------------
    def _try_solo(self) -> Solo | None:
        """A Solo when this request is the only one of its group and the manager is idle, else None."""
        if not self.solo_enabled:
            return None
        with self._solo_lock:
            if self._solo is not None or not self.admission.alone() or self._manager_busy():
                return None
            self._solo = Solo()
            return self._solo

    async def _join_solo(self) -> None:
        with self._solo_lock:
            solo = self._solo
        if solo is not None:  # a lone request holds the model: it stops at its next token and joins the batch
            await solo.handover()

    async def _run_solo(self, job: GenerationJob, run: "_Run", solo: Solo):
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        streamer, done = IdStreamer(loop, queue), loop.create_future()
        self.engine._work.put(Work(loop=loop, done=done, fn=self._generate_solo, args=(job, streamer, solo)))
        finished = False
        try:
            while (ids := await queue.get()) is not END:
                run.text.feed(ids)
                solo.halt = run.text.stopped
                for piece in run.text.drain():
                    yield piece
            await done
            finished = True
        finally:
            run.times, run.first = streamer.times, streamer.times[0] if streamer.times else None
            if not finished:  # the consumer went away (or generate failed): stop at the next token
                solo.halt = True
                self._abandoned(job, run)
        if solo.stop.is_set() and not run.done(job, self.eos, solo):
            self.handovers += 1

    def _generate_solo(self, job: GenerationJob, streamer: IdStreamer, solo: Solo) -> None:
        """On the engine's generation thread: ``generate`` with the model's own attention."""
        import torch
        from transformers import StoppingCriteriaList

        model = self.manager.model
        try:
            if solo.stop.is_set():  # another request came first: go to the batch at once
                return
            self.engine.on_batch(1)
            model.set_attn_implementation(self.static_attn)
            mixed = self.admission.current is multilora.MIXED and self.engine._adapters  # PEFT's own mixed batch
            extra = {"adapter_names": [job.adapter or multilora.BASE]} if mixed else {}
            with torch.inference_mode():
                ids = torch.tensor([job.prompt_ids], device=self.engine._input_device())
                self.engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                           max_new_tokens=job.max_tokens, streamer=streamer,
                                           stopping_criteria=StoppingCriteriaList([Halt(solo)]),
                                           eos_token_id=self.eos, pad_token_id=self.engine._pad_id(),
                                           **self.engine._sampling(job), **extra)
        finally:
            model.set_attn_implementation(self.cb_attn)
            with self._solo_lock:
                self._solo = None
            solo.ended()
            streamer.close()

    def _abandoned(self, job: GenerationJob, run: _Run) -> None:
        """Count what was computed for a request whose consumer went away."""
        self.engine.on_abandoned(job.adapter or self.engine.served_model_name, len(job.prompt_ids), len(run.text.ids))

    def _cancel(self, rid: str) -> None:
        self.manager.cancel_request(rid)
        with self.manager.output_router._lock:
            self.manager.output_router.result_handlers.pop(rid, None)

    def _finish(self, job: GenerationJob, text: _Text, first: float | None) -> Finish:
        n = len(text.ids)
        reason = "stop" if text.stopped or (n and text.ids[-1] in self.eos) else (
            "length" if n >= job.max_tokens else "stop")
        return Finish(reason=reason, prompt_tokens=len(job.prompt_ids), completion_tokens=n, first_token_at=first)


def eos_ids(engine) -> list[int]:
    return sorted(i for i in engine._eos_ids() if i is not None)


def _probe(manager, prompt: list[int], timeout: float = 120) -> str | None:
    """One two-token request through the manager: None when it works, else what went wrong."""
    manager.add_request(prompt, request_id="modelyard-probe", max_new_tokens=2,
                        temperature=1.0, top_k=1, top_p=1.0)
    out = manager.get_result(request_id="modelyard-probe", timeout=timeout)
    if out is None:
        return "a probe request got no answer from the manager"
    return out.error


def start_daemon(manager) -> None:
    """``manager.start()`` on a daemon thread. The library's thread is not a daemon, so a process
    that never calls ``stop`` (a server told to exit, a test that forgets) would wait on it forever
    at interpreter exit; ``close()`` still stops it cleanly when the server shuts down."""
    manager.background_thread_status.clear()
    manager._generation_thread = threading.Thread(target=manager._run_generation_loop,
                                                  name="continuous-batching", daemon=True)
    manager._generation_thread.start()


def start(engine, mode: str) -> tuple[ContinuousBatcher | None, str, str]:
    """(batcher or None, mode, reason). ``mode``: auto | continuous | static."""
    if mode == STATIC_MODE:
        return None, STATIC_MODE, "--batching static"
    model = engine._base()
    reason = unsupported_reason(model)
    batcher = None
    if reason is None:
        try:
            manager = model.init_continuous_batching(generation_config=_generation_config(model, eos_ids(engine)),
                                                     continuous_batching_config=cb_config(model))
            greedy_fast_path(manager)
            start_daemon(manager)
            reason = _probe(manager, engine.encode_prompt("Hello") or [0])
            if reason is None:
                greedy_argmax_sampler(manager)
                batcher = ContinuousBatcher(engine, manager)
            else:
                manager.stop(block=True, timeout=10)
        except Exception as exc:  # an architecture or quantization the library refuses
            reason = f"transformers refused continuous batching: {exc}"
    if batcher is None and mode == CONTINUOUS:
        raise BatchingConfigError(f"--batching continuous cannot apply: {reason}; use --batching auto or static")
    if batcher is None:
        print(f"modelyard serve: accelerate engine batching: static (continuous batching cannot apply: {reason})",
              file=sys.stderr, flush=True)
        return None, STATIC_MODE, reason
    print("modelyard serve: accelerate engine batching: continuous (transformers' paged-attention scheduler)",
          file=sys.stderr, flush=True)
    return batcher, CONTINUOUS, ""
