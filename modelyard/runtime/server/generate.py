"""One completions / chat completions request: parse (unknown or unsupported fields → 400 naming
the field), tokenize and render the chat template off the event loop (a huge prompt never stalls
``/health``), one ``GenerationJob`` per prompt × ``n``, run them, answer as JSON or SSE, and cancel
every job when the client goes away (streaming or not)."""
from __future__ import annotations

import asyncio
import json
import time

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from modelyard.runtime.server import errors, protocol, responses
from modelyard.runtime.server.engine import Delta, Finish, GenerationJob, ServingEngine
from modelyard.runtime.server.errors import APIError

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions
CLIENT_GONE = 499
DISCONNECT_POLL_S = 0.25


class ClientGone(Exception):
    """The client disconnected before the answer was ready."""


async def read_body(request: Request) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise errors.bad_request("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise errors.bad_request("The request body must be a JSON object.")
    return body


def validate(body: dict, model_cls):
    try:
        return model_cls.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(x) for x in first["loc"]) or "body"
        if first["type"] == "extra_forbidden":
            message = f"{field}: this field is not supported by this server; remove it"
        else:
            message = f"{field}: {first['msg'].removeprefix('Value error, ')}"
        raise errors.bad_request(message, param=field) from None


class _Call:
    """Metrics bookkeeping of one generation request, shared by the plain and streaming paths."""

    def __init__(self, state, endpoint: str):
        self.state, self.endpoint, self.start = state, endpoint, time.perf_counter()
        self.model = "unknown"
        state.metrics.in_flight.inc()

    def done(self, code: int, finish: Finish | None = None) -> None:
        m = self.state.metrics
        m.in_flight.dec()
        m.request_done(self.model, self.endpoint, code, time.perf_counter() - self.start)
        if finish is not None:
            m.tokens(self.model, finish.prompt_tokens, finish.completion_tokens)
            if finish.first_token_at is not None:
                m.first_token(self.model, finish.first_token_at - self.start)


async def _encode(engine: ServingEngine, req, chat: bool) -> list[list[int]]:
    if chat:
        return [await asyncio.to_thread(engine.encode_chat, [m.for_template() for m in req.messages])]
    vocab = getattr(engine, "vocab_size", None)
    out = []
    for p in req.prompts():
        if isinstance(p, list):
            if vocab and any(not 0 <= t < vocab for t in p):
                raise errors.bad_request(f"prompt: token ids must be in [0, {vocab})", param="prompt")
            out.append(list(p))
        else:
            out.append(await asyncio.to_thread(engine.encode_prompt, p))
    return out


def _jobs(engine: ServingEngine, req, prompts: list[list[int]], chat: bool, adapter: str | None) -> list[GenerationJob]:
    where, limit = ("messages", req.limit()) if chat else ("prompt", req.max_tokens)
    vocab = getattr(engine, "vocab_size", None)
    if req.logit_bias and vocab and any(not 0 <= t < vocab for t in req.logit_bias):
        raise errors.bad_request(f"logit_bias: token ids must be in [0, {vocab})", param="logit_bias")
    jobs = []
    for ids in prompts:
        room = engine.max_model_len - len(ids)
        wanted = limit if limit is not None else (DEFAULT_COMPLETION_TOKENS if not chat else room)
        if len(ids) + max(wanted, 0) > engine.max_model_len or room <= 0:
            raise errors.context_too_long(engine.max_model_len, len(ids), wanted, where)
        for i in range(req.n):
            jobs.append(GenerationJob(
                prompt_ids=ids, max_tokens=wanted, adapter=adapter, temperature=req.temperature, top_p=req.top_p,
                stop=req.stop_list(), seed=None if req.seed is None else req.seed + i, stream=req.stream,
                logprobs=req.top_count() if chat else req.top_logprobs(), presence_penalty=req.presence_penalty,
                frequency_penalty=req.frequency_penalty, logit_bias=dict(req.logit_bias or {})))
    return jobs


def _total(prompts: list[list[int]], finishes: list[Finish]) -> Finish:
    firsts = [f.first_token_at for f in finishes if f.first_token_at is not None]
    return Finish(reason="stop", prompt_tokens=sum(len(p) for p in prompts),
                  completion_tokens=sum(f.completion_tokens for f in finishes),
                  first_token_at=min(firsts) if firsts else None)


async def _collect(engine: ServingEngine, job: GenerationJob) -> tuple[str, Finish, list | None]:
    parts, entries, finish = [], ([] if job.logprobs is not None else None), None
    async for ev in engine.stream(job):
        if isinstance(ev, Delta):
            parts.append(ev.text)
            if entries is not None and ev.logprobs:
                entries.extend(ev.logprobs)
        else:
            finish = ev
    return "".join(parts), finish, entries


async def _run_all(request: Request, engine: ServingEngine, jobs: list[GenerationJob]) -> list:
    """Every job's (text, Finish, logprobs); ClientGone (all jobs cancelled) when the client leaves."""
    tasks = [asyncio.ensure_future(_collect(engine, j)) for j in jobs]
    try:
        while True:
            done, pending = await asyncio.wait(tasks, timeout=DISCONNECT_POLL_S)
            if any(t.exception() for t in done):
                break
            if not pending:
                break
            if await request.is_disconnected():
                raise ClientGone
        return [t.result() for t in tasks]
    finally:
        for t in tasks:
            t.cancel()  # a cancelled stream() marks its job cancelled: generation stops at the next token


async def _merged(engine: ServingEngine, jobs: list[GenerationJob], request: Request | None = None):
    """(choice index, event) from every job as they come; the jobs stop when this is closed or the
    client disconnects (noticed even while the jobs wait in the queue and nothing is sent)."""
    queue: asyncio.Queue = asyncio.Queue()

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_S)
        await queue.put((-1, ClientGone()))

    async def pump(i: int, job: GenerationJob) -> None:
        try:
            async for ev in engine.stream(job):
                await queue.put((i, ev))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
            await queue.put((i, exc))

    tasks = [asyncio.ensure_future(pump(i, j)) for i, j in enumerate(jobs)]
    if request is not None:
        tasks.append(asyncio.ensure_future(watch()))
    try:
        remaining = len(jobs)
        while remaining:
            i, ev = await queue.get()
            if isinstance(ev, Exception):
                raise ev
            remaining -= isinstance(ev, Finish)
            yield i, ev
    finally:
        for t in tasks:
            t.cancel()


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


async def _stream_events(call: _Call, engine, jobs, prompts, chat: bool, rid: str, include_usage: bool,
                         request: Request):
    model, code, finishes = call.model, CLIENT_GONE, []
    offsets = [0] * len(jobs)
    try:
        if chat:
            for i in range(len(jobs)):
                yield _sse(responses.chat_chunk(rid, model, i, {"role": "assistant", "content": ""}))
        async for i, ev in _merged(engine, jobs, request):
            if isinstance(ev, Finish):
                finishes.append(ev)
                yield _sse(responses.chat_chunk(rid, model, i, {}, ev.reason) if chat
                           else responses.completion_chunk(rid, model, i, "", ev.reason))
            elif ev.text or ev.logprobs:
                yield _sse(responses.chat_chunk(rid, model, i, {"content": ev.text}, None, ev.logprobs) if chat
                           else responses.completion_chunk(rid, model, i, ev.text, None, ev.logprobs, offsets[i]))
                offsets[i] += len(ev.text)
        total = _total(prompts, finishes)
        if include_usage:
            obj = "chat.completion.chunk" if chat else "text_completion"
            yield _sse(responses.usage_chunk(rid, model, obj, responses.usage(total.prompt_tokens, total.completion_tokens)))
        yield "data: [DONE]\n\n"
        code = 200
    except ClientGone:
        return
    except APIError as exc:
        code = exc.status
        yield _sse(exc.body())
    except Exception as exc:  # the engine failed mid-stream: tell the client in-band
        code = 500
        yield _sse(APIError(500, f"generation failed: {exc}", type="internal_error").body())
    finally:
        call.done(code, _total(prompts, finishes) if code == 200 else None)


def adapter_for(state, name: str) -> str | None:
    engine = state.engine
    if name == engine.served_model_name:
        return None
    if name in engine.adapters():
        return name
    raise errors.model_not_found(name, state.names())


async def generate(state, request: Request, chat: bool):
    call = _Call(state, "chat_completions" if chat else "completions")
    try:
        body = await read_body(request)
        if state.ready and body.get("model") in state.names():
            call.model = body["model"]  # label even a request that fails validation with its model
        req = validate(body, protocol.ChatRequest if chat else protocol.CompletionRequest)
        engine = state.require_ready()
        adapter = adapter_for(state, req.model)
        call.model = req.model
        prompts = await _encode(engine, req, chat)
        jobs = _jobs(engine, req, prompts, chat, adapter)
        rid = protocol.new_id("chatcmpl" if chat else "cmpl")
        if req.stream:
            return StreamingResponse(_stream_events(call, engine, jobs, prompts, chat, rid, req.include_usage,
                                                    request), media_type="text/event-stream")
        results = await _run_all(request, engine, jobs)
    except ClientGone:
        call.done(CLIENT_GONE)
        return Response(status_code=CLIENT_GONE)
    except APIError as exc:
        call.done(exc.status)
        return errors.error_response(exc)
    except Exception as exc:
        call.done(500)
        return errors.error_response(APIError(500, f"generation failed: {exc}", type="internal_error"))
    total = _total(prompts, [f for _, f, _ in results])
    call.done(200, total)
    build = responses.chat_body if chat else responses.completion_body
    return JSONResponse(build(rid, req.model, [(t, f.reason, lp) for t, f, lp in results],
                              responses.usage(total.prompt_tokens, total.completion_tokens)))
