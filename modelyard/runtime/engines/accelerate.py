"""The transformers + accelerate engine: ``from_pretrained(device_map=..., max_memory=...,
offload_folder=...)`` shards a model over GPUs, CPU and disk; bitsandbytes quantizes at load time
(int8/int4, GPU only); peft serves LoRA adapters chosen per request by model name.

Generation runs ``model.generate`` on one worker thread (``accelerate_batch.py``): queued
non-streaming requests with the same adapter and sampling settings are batched into one call;
streaming and seeded requests run alone, in arrival order; adapter load/unload run on the same
thread and never race a generation.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import threading
from pathlib import Path
from typing import Callable

from modelyard.runtime.engines import lora
from modelyard.runtime.errors import RuntimeStepError, fail_step
from modelyard.runtime.engines.accelerate_batch import FirstToken, Work, WorkQueue, batch_key, left_pad, trim
from modelyard.runtime.server.engine import Delta, Finish, GenerationJob
from modelyard.runtime.server.errors import APIError

PRECISIONS = ("auto", "float32", "float16", "bfloat16", "fp8", "int8", "int4")


class EngineConfigError(ValueError):
    """The arguments cannot work on this engine or machine; the message says what would."""


def _max_memory(raw: str | None) -> dict | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise EngineConfigError(f"--max-memory is not JSON ({exc}); e.g. '{{\"0\": \"70GiB\", \"cpu\": \"100GiB\"}}'") from None
    if not isinstance(value, dict) or not value:
        raise EngineConfigError("--max-memory must be a JSON object like {\"0\": \"70GiB\", \"cpu\": \"100GiB\"}")
    return {int(k) if str(k).isdigit() else k: v for k, v in value.items()}


# from_pretrained keywords the spec owns: extra arguments cannot set them.
_OWNED_KWARGS = {"trust_remote_code": "spec.serving.trustRemoteCode (modelyard serve --trust-remote-code)"}


def _extra_kwargs(extra: list[str]) -> dict:
    """Engine args after ``--``: ``key=value`` pairs for ``from_pretrained`` (values parsed as JSON when they can be)."""
    out = {}
    for item in extra:
        key, sep, value = item.lstrip("-").partition("=")
        if not sep:
            raise EngineConfigError(f"extra accelerate argument {item!r}: expected key=value (a from_pretrained keyword)")
        if key.replace("-", "_") in _OWNED_KWARGS:
            raise EngineConfigError(f"extra accelerate argument {item!r} is refused: set "
                                    f"{_OWNED_KWARGS[key.replace('-', '_')]} instead")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def load_kwargs(model_dir: str, precision: str, gpus: int, max_memory: dict | None,
                offload_folder: str | None, cuda_available: bool) -> dict:
    """The ``from_pretrained`` keywords for this request, or EngineConfigError saying why not."""
    import torch

    config = json.loads((Path(model_dir) / "config.json").read_text())
    prequantized = "quantization_config" in config
    if gpus > 0 and not cuda_available:
        raise EngineConfigError(f"--gpus {gpus} but no GPU is visible (torch.cuda.is_available() is False); use --gpus 0 for CPU")
    kwargs: dict = {"dtype": "auto" if precision in ("auto", "fp8", "int8", "int4") else getattr(torch, precision)}
    if precision in ("int8", "int4") and not prequantized:
        if not cuda_available or gpus == 0:
            raise EngineConfigError(
                f"precision {precision} on the accelerate engine needs a GPU (bitsandbytes); use the vllm "
                f"engine with a converted {precision} checkpoint, or precision bfloat16")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (BitsAndBytesConfig(load_in_8bit=True) if precision == "int8" else
                                         BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                            bnb_4bit_compute_dtype=torch.bfloat16))
    if precision == "fp8" and not prequantized:
        raise EngineConfigError("precision fp8 on the accelerate engine needs a converted fp8 checkpoint "
                                "(modelyard convert --precision fp8); or use the vllm engine, or precision bfloat16")
    if gpus > 0 and max_memory is None:
        max_memory = _first_gpus(gpus)
    if max_memory is None and gpus == 0:
        kwargs["device_map"] = "cpu"
    else:
        kwargs["device_map"] = "auto"
        if max_memory is not None:
            kwargs["max_memory"] = max_memory
            # used only when something lands on disk; one fixed folder, not a new one per start
            kwargs["offload_folder"] = offload_folder or str(Path(tempfile.gettempdir()) / "modelyard-offload")
    return kwargs


def _first_gpus(gpus: int) -> dict | None:
    """Keep ``device_map="auto"`` on the first ``gpus`` GPUs (plus CPU) when more are visible."""
    import psutil
    import torch

    visible = torch.cuda.device_count()
    if gpus > visible:
        raise EngineConfigError(f"--gpus {gpus} but only {visible} GPU(s) are visible")
    if gpus == visible:
        return None  # accelerate's own default: every visible GPU, then CPU
    return {**{i: torch.cuda.mem_get_info(i)[0] for i in range(gpus)}, "cpu": psutil.virtual_memory().available}


def _context_length(config, tokenizer, requested: int | None) -> int:
    if requested:
        return requested
    cfg = getattr(config, "get_text_config", lambda: config)()
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        if getattr(cfg, key, None):
            return int(getattr(cfg, key))
    return int(min(getattr(tokenizer, "model_max_length", 2048), 1 << 20))


class AccelerateEngine:
    engine_name = "accelerate"

    def __init__(self, model_dir: str, served_model_name: str, kwargs: dict,
                 adapters: dict[str, str], max_model_len: int | None = None, batching: str = "auto"):
        self.model_dir, self.served_model_name, self.kwargs = model_dir, served_model_name, kwargs
        self.initial_adapters, self.requested_len = adapters, max_model_len
        self.max_model_len = max_model_len or 0
        self.model = self.tokenizer = None
        self._adapters: dict[str, str] = {}
        self.on_batch: Callable[[int], None] = lambda size: None
        self.on_abandoned: Callable[[str, int, int], None] = lambda model, prompt, generated: None
        self.on_token_times: Callable[[str, list[float]], None] = lambda model, times: None
        self._work = WorkQueue()
        # continuous batching (accelerate_cb) when it can apply; the mode and why are exported as a metric
        self.batching_requested, self.batching, self.batching_reason = batching, "static", "not loaded"
        self._cb = None
        threading.Thread(target=self._serve_work, name="generate", daemon=True).start()

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        trust = bool(self.kwargs.get("trust_remote_code"))
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, trust_remote_code=trust)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, **self.kwargs).eval()
        self.base_config = json.loads((Path(self.model_dir) / "config.json").read_text())
        self.max_model_len = _context_length(self.model.config, self.tokenizer, self.requested_len)
        for name, path in self.initial_adapters.items():
            self._load_adapter(name, path)
        from modelyard.runtime.engines import accelerate_cb

        self._cb, self.batching, self.batching_reason = accelerate_cb.start(self, self.batching_requested)

    def close(self) -> None:
        """Stop the continuous-batching manager (the server calls this when it stops)."""
        cb, self._cb = self._cb, None
        if cb is not None:
            cb.close()

    def _base(self):
        return self.model.get_base_model() if self._adapters else self.model

    def _load_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel

        cfg = lora.read_config(name, path)
        lora.check_against(name, path, cfg, self._base(), self.base_config)
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(path, adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name).eval()
        self._adapters[name] = path

    def _unload_adapter(self, name: str) -> None:
        if len(self._adapters) == 1:
            self.model = self.model.unload()  # last one: remove the LoRA layers, back to the plain model
        else:
            self.model.delete_adapter(name)
        del self._adapters[name]

    def adapters(self) -> list[str]:
        return list(self._adapters)

    async def _call(self, fn, *args):
        if self._cb is not None:  # with the continuous-batching manager paused
            async with self._cb.paused():
                return await self._queue_call(fn, *args)
        return await self._queue_call(fn, *args)

    async def _queue_call(self, fn, *args):
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._work.put(Work(loop=loop, done=done, fn=fn, args=args))
        return await done

    async def load_adapter(self, name: str, path: str) -> None:
        try:
            await self._call(self._load_adapter, name, path)
        except lora.AdapterError as exc:
            raise APIError(400, str(exc), param="lora_path", code="invalid_adapter") from None

    async def unload_adapter(self, name: str) -> None:
        await self._call(self._unload_adapter, name)

    # -- tokens ----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return max(len(self.tokenizer), int(getattr(self._base().config, "vocab_size", 0) or 0))

    def encode_prompt(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt)["input_ids"])

    def encode_chat(self, messages: list[dict]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise APIError(400, "This model's tokenizer has no chat template; use /v1/completions.", param="messages")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- generation ------------------------------------------------------------------------
    def _adapter_context(self, adapter: str | None):
        if adapter is None:
            return self.model.disable_adapter() if self._adapters else contextlib.nullcontext()
        if adapter not in self._adapters:
            raise APIError(404, f"The model `{adapter}` does not exist.", param="model", code="model_not_found")
        self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    def _sampling(self, job: GenerationJob) -> dict:
        if job.temperature == 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": job.temperature, "top_p": job.top_p, "top_k": 0}

    def _serve_work(self) -> None:
        """The generation thread: one item, or one batch of compatible items, at a time."""
        while True:
            batch = self._work.take()
            try:
                if batch[0].fn is not None:
                    batch[0].resolve(batch[0].fn(*batch[0].args))
                    continue
                live = [w for w in batch if not w.streamer.cancelled]
                if len(live) > 1:
                    self._run_batch(live)
                elif live:
                    self._run(live[0].job, live[0].streamer)
                for w in live:
                    if w.streamer.cancelled:  # the client left mid-way: still count what was computed
                        self.on_abandoned(w.job.adapter or self.served_model_name, len(w.job.prompt_ids),
                                          len(w.streamer.ids))
                for w in batch:
                    w.resolve()
            except BaseException as exc:  # reported to every waiting request
                for w in batch:
                    w.resolve(error=exc)
            finally:
                for w in batch:
                    if w.streamer is not None:
                        w.streamer.finish()
                self._work.done()

    def _run(self, job: GenerationJob, streamer) -> None:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from modelyard.runtime.engines.accelerate_stream import StopFlag

        self.on_batch(1)
        with self._adapter_context(job.adapter), torch.inference_mode():
            if job.seed is not None:
                torch.manual_seed(job.seed)
            ids = torch.tensor([job.prompt_ids], device=self._input_device())
            self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                max_new_tokens=job.max_tokens, streamer=streamer,
                                stopping_criteria=StoppingCriteriaList([StopFlag(streamer)]),
                                logits_processor=LogitsProcessorList(streamer.processors),
                                pad_token_id=self._pad_id(), **self._sampling(job))

    def _run_batch(self, batch: list[Work]) -> None:
        import torch

        self.on_batch(len(batch))
        jobs = [w.job for w in batch]
        ids, mask = left_pad([j.prompt_ids for j in jobs], self._pad_id())
        first = FirstToken()
        with self._adapter_context(jobs[0].adapter), torch.inference_mode():
            device = self._input_device()
            out = self.model.generate(input_ids=torch.tensor(ids, device=device),
                                      attention_mask=torch.tensor(mask, device=device),
                                      max_new_tokens=max(j.max_tokens for j in jobs), streamer=first,
                                      pad_token_id=self._pad_id(), **self._sampling(jobs[0]))
        eos, width = self._eos_ids(), len(ids[0])
        for row, w in enumerate(batch):
            w.streamer.first_token_at = first.at
            w.streamer.token_times = first.times
            w.streamer.take_all(trim(out[row, width:].tolist(), w.job.max_tokens, eos))

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    def _input_device(self):
        devices = set((getattr(self._base(), "hf_device_map", None) or {}).values())
        cuda = sorted(d for d in devices if isinstance(d, int))
        return f"cuda:{cuda[0]}" if cuda else self._base().device

    def _eos_ids(self) -> set[int]:
        eos = self._base().generation_config.eos_token_id
        return set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}

    def stream(self, job: GenerationJob):
        return self._cb.stream(job) if self._cb is not None else self._stream_static(job)

    async def _stream_static(self, job: GenerationJob):
        from modelyard.runtime.engines import accelerate_sampling
        from modelyard.runtime.engines.accelerate_stream import END, QueueStreamer

        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        procs, recorder = accelerate_sampling.processors(job, self.tokenizer)
        streamer = QueueStreamer(self.tokenizer, loop, queue, job.stop, recorder)
        streamer.processors = procs
        done = loop.create_future()
        self._work.put(Work(loop=loop, done=done, job=job, streamer=streamer, key=batch_key(job)))
        try:
            while (item := await queue.get()) is not END:
                yield Delta(*item)
            await done
        finally:
            streamer.cancelled = True
        n = len(streamer.ids)
        self.on_token_times(job.adapter or self.served_model_name, streamer.token_times[:n])
        reason = "stop" if streamer.stopped or (n and streamer.ids[-1] in self._eos_ids()) else (
            "length" if n >= job.max_tokens else "stop")
        yield Finish(reason=reason, prompt_tokens=len(job.prompt_ids), completion_tokens=n,
                     first_token_at=streamer.first_token_at)


def build(args) -> AccelerateEngine:
    """Check the arguments and make an (unloaded) engine; EngineConfigError / AdapterError say why not."""
    import torch

    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise EngineConfigError(f"--model {args.model}: no config.json there (a Hugging Face model folder is expected)")
    adapters: dict[str, str] = {}
    for spec in args.adapter or []:
        name, path = lora.parse_spec(spec)
        if name in adapters or name == args.served_model_name:
            raise lora.AdapterError(f"--adapter {name}: the name is used twice (adapter names must differ from each other and the model name)")
        lora.read_config(name, path)
        adapters[name] = path
    kwargs = load_kwargs(str(model_dir), args.precision, args.gpus, _max_memory(args.max_memory),
                         args.offload_folder, torch.cuda.is_available())
    kwargs.update(_extra_kwargs(args.extra or []))
    kwargs["trust_remote_code"] = bool(getattr(args, "trust_remote_code", False))
    return AccelerateEngine(str(model_dir), args.served_model_name, kwargs, adapters, args.max_model_len,
                            batching=getattr(args, "batching", "auto"))


def serve(args) -> int:
    from modelyard.runtime import server
    from modelyard.runtime.metrics import ServingMetrics

    try:
        engine = build(args)
    except (EngineConfigError, lora.AdapterError) as exc:
        reason = exc.reason if isinstance(exc, RuntimeStepError) else "InvalidServingConfig"
        return fail_step(RuntimeStepError(reason, str(exc)), "serve")
    metrics = ServingMetrics("accelerate", args.served_model_name, planned_gpu_bytes=args.planned_gpu_bytes)
    engine.on_batch = metrics.batch_size.labels(model=args.served_model_name).observe
    engine.on_abandoned = metrics.tokens
    engine.on_token_times = metrics.inter_token

    def load() -> None:
        engine.load()
        metrics.batching_mode(engine.batching, engine.batching_reason)
        if engine._cb is not None:
            engine._cb.on_path = metrics.batching_request
        for name in engine.adapters():
            metrics.adapter_added(name)

    from modelyard.runtime.guard import GuardConfig

    guard = GuardConfig.from_args(args, engine.initial_adapters)
    return server.run(engine, metrics, load, args.host, args.port, guard)
