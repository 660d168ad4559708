"""A thin async reverse proxy in front of an engine that has its own OpenAI server (vLLM).

Our public port answers the OpenAI API by passing requests through to the engine on an internal
localhost port (SSE streams chunk by chunk) and records the ``modelyard_*`` metrics of
``modelyard.runtime.metrics`` on the way, so every engine exports the same series. ``/metrics``
is our registry followed by the engine's own text (``vllm:*``). ``/health`` is 503 until the
engine answers its own ``/health``. LoRA load/unload are checked against the base model first
(400 with the reason) and then forwarded; the adapter gauge follows what the engine accepted.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Callable

import aiohttp
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from modelyard.runtime.metrics import CONTENT_TYPE, ServingMetrics

_HOP = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "accept-encoding"}
_ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat_completions"}


def _error(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": None, "code": code}},
                        status_code=status)


@dataclass
class ProxyState:
    upstream: str                       # http://127.0.0.1:PORT
    metrics: ServingMetrics
    served_model_name: str
    validate_adapter: Callable[[str, str], None]   # (name, path) → raises with a message
    adapters: set[str] = field(default_factory=set)
    ready: bool = False
    error: str | None = None
    in_flight: int = 0
    started: float = field(default_factory=time.monotonic)
    session: aiohttp.ClientSession | None = None

    def label(self, model) -> str:
        """The ``model`` label: a name we serve, else "unknown" (bounded cardinality)."""
        return model if model == self.served_model_name or model in self.adapters else "unknown"

    def not_ready(self) -> JSONResponse:
        if self.error:
            return _error(503, self.error, "service_unavailable", "engine_failed")
        return _error(503, "The model is still loading; retry when GET /health answers 200.",
                      "service_unavailable", "model_loading")


def _headers(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.lower() not in _HOP}


def _usage(data: dict | None) -> tuple[int, int] | None:
    usage = (data or {}).get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


class _Call:
    """Metrics bookkeeping of one generation request, plain or streamed."""

    def __init__(self, state: ProxyState, endpoint: str):
        self.state, self.endpoint, self.start = state, endpoint, time.perf_counter()
        self.model = "unknown"
        self.first: float | None = None
        self.tokens: tuple[int, int] | None = None
        state.in_flight += 1
        state.metrics.in_flight.inc()

    def first_byte(self) -> None:
        if self.first is None:
            self.first = time.perf_counter() - self.start

    def done(self, code: int) -> None:
        m, s = self.state.metrics, self.state
        s.in_flight -= 1
        m.in_flight.dec()
        m.request_done(self.model, self.endpoint, code, time.perf_counter() - self.start)
        if code == 200:
            if self.first is not None:
                m.first_token(self.model, self.first)
            if self.tokens:
                m.tokens(self.model, *self.tokens)


def _prepare(raw: bytes) -> tuple[dict | None, bool, bool]:
    """(body, streaming, client asked for usage); asks the engine for usage on streams."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, False, False
    if not isinstance(body, dict) or not body.get("stream"):
        return (body if isinstance(body, dict) else None), False, False
    opts = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
    wants = bool(opts.get("include_usage"))
    body["stream_options"] = {**opts, "include_usage": True}
    return body, True, wants


async def _relay(call: _Call, resp: aiohttp.ClientResponse, wants_usage: bool):
    """Pass SSE events through as they arrive; read (and maybe drop) the usage chunk."""
    code, buf = 499, b""  # 499: the client went away before the end
    try:
        async for piece in resp.content.iter_any():
            call.first_byte()
            buf += piece
            out = []
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if b'"usage"' in event and event.startswith(b"data: {"):
                    data = json.loads(event[6:])
                    if not data.get("choices"):
                        call.tokens = _usage(data) or call.tokens
                        if not wants_usage:
                            continue
                out.append(event + b"\n\n")
            if out:
                yield b"".join(out)
        if buf:
            yield buf
        code = resp.status
    finally:
        resp.release()
        call.done(code)


async def _generate(state: ProxyState, request: Request, endpoint: str):
    call = _Call(state, endpoint)
    try:
        if not state.ready:
            call.done(503)
            return state.not_ready()
        raw = await request.body()
        body, streaming, wants_usage = _prepare(raw)
        call.model = state.label((body or {}).get("model"))
        if streaming:
            raw = json.dumps(body).encode()
        resp = await state.session.post(state.upstream + request.url.path, data=raw, headers=_headers(request))
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        call.done(502)
        return _error(502, f"the engine did not answer: {exc}", "engine_unavailable")
    ctype = resp.headers.get("content-type", "")
    if streaming and resp.status == 200 and ctype.startswith("text/event-stream"):
        return StreamingResponse(_relay(call, resp, wants_usage), status_code=200, media_type="text/event-stream")
    try:
        data = await resp.read()
    finally:
        resp.release()
    call.first_byte()
    if resp.status == 200:
        try:
            call.tokens = _usage(json.loads(data))
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
    call.done(resp.status)
    return Response(data, status_code=resp.status, media_type=ctype or None)


async def _forward(state: ProxyState, request: Request, path: str) -> tuple[int, bytes, str]:
    body = await request.body()
    async with state.session.request(request.method, state.upstream + path, data=body or None,
                                     headers=_headers(request), params=request.query_params) as resp:
        return resp.status, await resp.read(), resp.headers.get("content-type", "")


async def _lora(state: ProxyState, request: Request, load: bool) -> Response:
    if not state.ready:
        return state.not_ready()
    raw = await request.body()
    try:
        body = json.loads(raw)
        name = body["lora_name"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        return _error(400, "the body must be JSON with lora_name (and lora_path to load)")
    if load:
        try:
            state.validate_adapter(name, str(body.get("lora_path") or ""))
        except Exception as exc:  # AdapterError and friends: the reason, as a 400
            return _error(400, str(exc), code="invalid_adapter")
    status, data, ctype = await _forward(state, request, request.url.path)
    if status == 200:
        if load:
            state.adapters.add(name)
            state.metrics.adapter_added(name)
        else:
            state.adapters.discard(name)
            state.metrics.adapter_removed(name)
    return Response(data, status_code=status, media_type=ctype or None)


async def _wait_ready(state: ProxyState, timeout: float) -> None:
    """Poll the engine's /health until it answers 200; then record the load time."""
    deadline = time.monotonic() + timeout
    while not state.ready and state.error is None:
        try:
            async with state.session.get(state.upstream + "/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status == 200:
                    state.ready = True
                    state.metrics.model_load_seconds.set(time.monotonic() - state.started)
                    for name in state.adapters:
                        state.metrics.adapter_added(name)
                    return
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        if time.monotonic() > deadline:
            state.error = f"the engine was not ready after {timeout:.0f}s"
            return
        await asyncio.sleep(0.25)


def create_proxy_app(state: ProxyState, ready_timeout: float = 1800.0, on_ready=None) -> FastAPI:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        state.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10), auto_decompress=False)

        async def wait():
            await _wait_ready(state, ready_timeout)
            if on_ready:
                on_ready(state)

        task = asyncio.create_task(wait())
        try:
            yield
        finally:
            task.cancel()
            await state.session.close()

    app = FastAPI(title="modelyard", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.get("/health")
    async def health():
        if not state.ready or state.error:
            return state.not_ready()
        try:
            status, data, ctype = await _forward_get(state, "/health")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return _error(503, f"the engine does not answer: {exc}", "service_unavailable")
        return Response(data, status_code=status, media_type=ctype or None) if status != 200 else {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        text = state.metrics.render()
        if state.ready:
            try:
                status, data, _ = await _forward_get(state, "/metrics")
                if status == 200:
                    text += data
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass  # our own series still answer
        return Response(text, media_type=CONTENT_TYPE)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _generate(state, request, "completions")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _generate(state, request, "chat_completions")

    @app.post("/v1/load_lora_adapter")
    async def load_lora(request: Request):
        return await _lora(state, request, load=True)

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora(request: Request):
        return await _lora(state, request, load=False)

    @app.api_route("/{path:path}", methods=["GET", "POST", "DELETE"])
    async def passthrough(path: str, request: Request):
        if not state.ready:
            return state.not_ready()
        status, data, ctype = await _forward(state, request, "/" + path)
        return Response(data, status_code=status, media_type=ctype or None)

    return app


async def _forward_get(state: ProxyState, path: str) -> tuple[int, bytes, str]:
    async with state.session.get(state.upstream + path, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        return resp.status, await resp.read(), resp.headers.get("content-type", "")
