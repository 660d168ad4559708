"""The OpenAI-compatible HTTP layer (FastAPI): models, completions, chat completions with SSE
streaming, LoRA load/unload (vLLM's endpoints and shapes), /health and /metrics."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import ValidationError

from modelyard.runtime.metrics import CONTENT_TYPE, ServingMetrics
from modelyard.runtime.server import errors, protocol
from modelyard.runtime.server.engine import Delta, Finish, GenerationJob, ServingEngine
from modelyard.runtime.server.errors import APIError

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclass
class ServerState:
    engine: ServingEngine
    metrics: ServingMetrics
    ready: bool = False
    error: str | None = None

    def require_ready(self) -> ServingEngine:
        if not self.ready:
            raise errors.not_ready()
        return self.engine

    def names(self) -> list[str]:
        return [self.engine.served_model_name, *self.engine.adapters()]


async def _body(request: Request) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise errors.bad_request("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise errors.bad_request("The request body must be a JSON object.")
    return body


def _validate(body: dict, model_cls):
    try:
        return model_cls.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(x) for x in first["loc"]) or "body"
        raise errors.bad_request(f"{field}: {first['msg']}", param=field) from None


async def _parse(request: Request, model_cls):
    return _validate(await _body(request), model_cls)


def _adapter_for(state: ServerState, name: str) -> str | None:
    engine = state.engine
    if name == engine.served_model_name:
        return None
    if name in engine.adapters():
        return name
    raise errors.model_not_found(name, state.names())


def _job(engine: ServingEngine, req, prompt_ids: list[int], limit: int | None, where: str,
         adapter: str | None) -> GenerationJob:
    room = engine.max_model_len - len(prompt_ids)
    wanted = limit if limit is not None else (DEFAULT_COMPLETION_TOKENS if where == "prompt" else room)
    if len(prompt_ids) + max(wanted, 0) > engine.max_model_len or room <= 0:
        raise errors.context_too_long(engine.max_model_len, len(prompt_ids), wanted, where)
    return GenerationJob(prompt_ids=prompt_ids, max_tokens=wanted, adapter=adapter, temperature=req.temperature,
                         top_p=req.top_p, stop=req.stop_list(), seed=req.seed, stream=req.stream)


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


class _Call:
    """One generation request: metrics bookkeeping shared by the plain and streaming paths."""

    def __init__(self, state: ServerState, endpoint: str):
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


async def _collect(engine: ServingEngine, job: GenerationJob) -> tuple[str, Finish]:
    parts, finish = [], None
    async for ev in engine.stream(job):
        if isinstance(ev, Delta):
            parts.append(ev.text)
        else:
            finish = ev
    return "".join(parts), finish


async def _stream_events(call: _Call, engine: ServingEngine, job: GenerationJob, chat: bool, rid: str,
                         include_usage: bool):
    model, code, finish = call.model, 499, None  # 499: the client went away before the end
    obj = "chat.completion.chunk" if chat else "text_completion"
    try:
        if chat:
            yield _sse(protocol.chat_chunk(rid, model, {"role": "assistant", "content": ""}))
        async for ev in engine.stream(job):
            if isinstance(ev, Finish):
                finish = ev
            elif ev.text:
                yield _sse(protocol.chat_chunk(rid, model, {"content": ev.text}) if chat
                           else protocol.completion_chunk(rid, model, ev.text))
        yield _sse(protocol.chat_chunk(rid, model, {}, finish.reason) if chat
                   else protocol.completion_chunk(rid, model, "", finish.reason))
        if include_usage:
            yield _sse(protocol.usage_chunk(rid, model, obj, finish))
        yield "data: [DONE]\n\n"
        code = 200
    except APIError as exc:
        code = exc.status
        yield _sse(exc.body())
    except Exception as exc:  # the engine failed mid-stream: tell the client in-band
        code = 500
        yield _sse(APIError(500, f"generation failed: {exc}", type="internal_error").body())
    finally:
        call.done(code, finish if code == 200 else None)


async def _generate(state: ServerState, request: Request, chat: bool):
    call = _Call(state, "chat_completions" if chat else "completions")
    try:
        body = await _body(request)
        if state.ready and body.get("model") in state.names():
            call.model = body["model"]  # label even a request that fails validation with its model
        req = _validate(body, protocol.ChatRequest if chat else protocol.CompletionRequest)
        engine = state.require_ready()
        adapter = _adapter_for(state, req.model)
        call.model = req.model
        if chat:
            ids = engine.encode_chat([{"role": m.role, "content": m.text()} for m in req.messages])
            job = _job(engine, req, ids, req.limit(), "messages", adapter)
        else:
            job = _job(engine, req, engine.encode_prompt(req.prompt), req.max_tokens, "prompt", adapter)
        rid = protocol.new_id("chatcmpl" if chat else "cmpl")
        if req.stream:
            return StreamingResponse(_stream_events(call, engine, job, chat, rid, req.include_usage),
                                     media_type="text/event-stream")
        text, finish = await _collect(engine, job)
    except APIError as exc:
        call.done(exc.status)
        return errors.error_response(exc)
    except Exception as exc:
        call.done(500)
        return errors.error_response(APIError(500, f"generation failed: {exc}", type="internal_error"))
    call.done(200, finish)
    body = protocol.chat_body if chat else protocol.completion_body
    return JSONResponse(body(rid, req.model, text, finish))


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="modelyard", docs_url=None, redoc_url=None)
    errors.install(app)

    @app.get("/health")
    async def health():
        if state.error:
            return errors.error_response(APIError(503, state.error, type="service_unavailable"))
        state.require_ready()
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        state.require_ready()
        return protocol.model_list(state.names(), "modelyard", state.engine.served_model_name,
                                   state.engine.served_model_name)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _generate(state, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _generate(state, request, chat=True)

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request):
        req = await _parse(request, protocol.LoadAdapterRequest)
        engine = state.require_ready()
        if req.lora_name in state.names():
            raise errors.bad_request(f"The lora adapter '{req.lora_name}' has already been loaded.",
                                     param="lora_name")
        await engine.load_adapter(req.lora_name, req.lora_path)
        state.metrics.adapter_added(req.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request):
        req = await _parse(request, protocol.UnloadAdapterRequest)
        engine = state.require_ready()
        if req.lora_name not in engine.adapters():
            raise APIError(404, f"The lora adapter '{req.lora_name}' cannot be found.",
                           type="not_found_error", param="lora_name", code="adapter_not_found")
        await engine.unload_adapter(req.lora_name)
        state.metrics.adapter_removed(req.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")

    return app
