"""modelyard's metrics and adapter checks inside vLLM's own OpenAI server, as an ASGI middleware
(vLLM's ``--middleware`` hook). One process, no extra network hop: a reverse proxy in front of
vLLM measured +71% p50 latency on a busy 2-core machine (docs/benchmarks-history.md); this
adds < 3% (docs/benchmarks.md).

Configured by the ``MODELYARD_VLLM`` environment variable (JSON written by ``vllm.py``):
``served_model_name``, ``model_dir``, ``max_lora_rank``, ``planned_gpu_bytes``, ``adapters``,
``started`` (epoch seconds when modelyard started vLLM), ``guard`` (API keys and limits,
``modelyard.runtime.guard``: it runs first, in front of everything below and of vLLM).

- ``/v1/completions``, ``/v1/chat/completions``: the ``modelyard_*`` request, latency, time to
  first token (first body byte / SSE chunk) and token series. Streams ask vLLM for the usage
  chunk and pass it on only when the client asked for it.
- Fields vLLM would accept and ignore are refused with 400 naming them (``vllm_fields``).
- ``/metrics``: our registry followed by vLLM's own text (``vllm:*``).
- ``/health`` on the leader of a multi-node group: 503 while a worker node is gone
  (``vllm_group.GroupWatch``), else vLLM's own answer.
- ``/v1/load_lora_adapter``: ``validate_adapter`` first (400 with the reason); the adapter gauge
  follows what vLLM accepted, on load and unload.
"""
from __future__ import annotations

import json
import os
import time

from modelyard.runtime.engines import vllm_fields
from modelyard.runtime.guard import Guard, GuardConfig, replay as _replay
from modelyard.runtime.metrics import CONTENT_TYPE, ServingMetrics

ENV = "MODELYARD_VLLM"
ON_READY: list = []  # called once vLLM's server accepts requests (vllm_launch stops its 503 placeholder)


def _ready() -> None:
    while ON_READY:
        ON_READY.pop()()


def _ready_after_startup(send):
    """uvicorn starts accepting right after the app's ``lifespan.startup.complete``: not earlier
    (vLLM's startup would leave requests waiting unanswered), not at the first request (the
    placeholder, idle in its own thread, would win every accept race and answer 503 forever)."""
    async def wrapped(message) -> None:
        await send(message)
        if message.get("type") == "lifespan.startup.complete":
            _ready()
    return wrapped
_ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat_completions"}


async def _read_body(receive) -> bytes | None:
    chunks = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            return b"".join(chunks)


def _with_headers(scope, drop: set[bytes], add: dict[bytes, bytes] | None = None) -> dict:
    headers = [(k, v) for k, v in scope["headers"] if k.lower() not in drop]
    return {**scope, "headers": headers + list((add or {}).items())}


def _usage(data) -> tuple[int, int] | None:
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def prepare(raw: bytes) -> tuple[dict | None, bool, bool]:
    """(body, streaming, client asked for usage); on streams ask the engine for usage."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, False, False
    if not isinstance(body, dict):
        return None, False, False
    if not body.get("stream"):
        return body, False, False
    opts = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
    body["stream_options"] = {**opts, "include_usage": True}
    return body, True, bool(opts.get("include_usage"))


async def _json_error(send, status: int, message: str, code: str | None, type_: str = "invalid_request_error",
                      param: str | None = None) -> None:
    body = json.dumps({"error": {"message": message, "type": type_, "param": param,
                                 "code": code}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _Call:
    """Metrics of one generation request while vLLM's response passes through ``send``."""

    def __init__(self, mw: "ModelyardMiddleware", endpoint: str, model: str, wants_usage: bool, send):
        self.mw, self.endpoint, self.model, self.wants_usage, self.send = mw, endpoint, model, wants_usage, send
        self.start = time.perf_counter()
        self.first: float | None = None
        self.status, self.sse, self.finished = 500, False, False
        self.buf, self.body, self.tokens = b"", [], None
        mw.metrics.in_flight.inc()

    async def __call__(self, msg) -> None:
        if msg["type"] == "http.response.start":
            self.status = msg["status"]
            ctype = dict(msg.get("headers") or []).get(b"content-type", b"")
            self.sse = ctype.startswith(b"text/event-stream")
            return await self.send(msg)
        if msg["type"] != "http.response.body":
            return await self.send(msg)
        chunk, more = msg.get("body", b""), msg.get("more_body", False)
        if chunk and self.first is None:
            self.first = time.perf_counter() - self.start
        if self.sse:
            chunk = self._events(chunk, more)
            if chunk or not more:
                await self.send({"type": "http.response.body", "body": chunk, "more_body": more})
        else:
            self.body.append(chunk)
            await self.send(msg)
        if not more:
            self.done(self.status)

    def _events(self, chunk: bytes, more: bool) -> bytes:
        """Complete SSE events of ``buf + chunk``; notes (and maybe drops) the usage event."""
        self.buf += chunk
        out = []
        while b"\n\n" in self.buf:
            event, self.buf = self.buf.split(b"\n\n", 1)
            if b'"usage"' in event and event.startswith(b"data: {"):
                data = json.loads(event[6:])
                if not data.get("choices"):
                    self.tokens = _usage(data) or self.tokens
                    if not self.wants_usage:
                        continue
            out.append(event + b"\n\n")
        if not more and self.buf:
            out.append(self.buf)
            self.buf = b""
        return b"".join(out)

    def done(self, code: int) -> None:
        if self.finished:
            return
        self.finished = True
        m = self.mw.metrics
        m.in_flight.dec()
        m.request_done(self.model, self.endpoint, code, time.perf_counter() - self.start)
        if code != 200:
            return
        if not self.sse and self.body:
            try:
                self.tokens = _usage(json.loads(b"".join(self.body)))
            except (json.JSONDecodeError, UnicodeDecodeError):
                pass
        if self.first is not None:
            m.first_token(self.model, self.first)
        if self.tokens:
            m.tokens(self.model, *self.tokens)


class ModelyardMiddleware:
    def __init__(self, app, config: dict | None = None):
        self.app = app
        cfg = config if config is not None else json.loads(os.environ.get(ENV) or "{}")
        self.name = cfg.get("served_model_name") or "model"
        self.model_dir = cfg.get("model_dir")
        self.max_rank = cfg.get("max_lora_rank")
        self.metrics = ServingMetrics("vllm", self.name, planned_gpu_bytes=cfg.get("planned_gpu_bytes"))
        self.adapters: set[str] = set(cfg.get("adapters") or [])
        for name in self.adapters:
            self.metrics.adapter_added(name)
        if cfg.get("started"):  # the stack is built at server start, right after the engine is ready
            self.metrics.model_load_seconds.set(max(0.0, time.time() - float(cfg["started"])))
        self.guard = Guard(self._route, GuardConfig.from_json(cfg.get("guard")))
        self.group = None
        if cfg.get("group_workers"):  # the leader of a multi-node group: /health covers the workers
            from modelyard.runtime.engines.vllm_group import GroupWatch

            self.group = GroupWatch(tuple(cfg["group_workers"])).start()

    def label(self, model) -> str:
        return model if model == self.name or model in self.adapters else "unknown"

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, _ready_after_startup(send))
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        _ready()  # without a lifespan: the first request shows vLLM's server accepts
        return await self.guard(scope, receive, send)

    async def _route(self, scope, receive, send):
        path, method = scope["path"], scope["method"]
        if method == "POST" and path in _ENDPOINTS:
            return await self._generate(scope, receive, send, _ENDPOINTS[path])
        if method == "GET" and path == "/metrics":
            return await self._metrics(scope, receive, send)
        if path == "/health" and self.group and (problem := self.group.problem()):
            return await _json_error(send, 503, problem, "group_incomplete", "service_unavailable")
        if method == "POST" and path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            return await self._lora(scope, receive, send, load=path.endswith("/load_lora_adapter"))
        return await self.app(scope, receive, send)

    async def _generate(self, scope, receive, send, endpoint: str):
        raw = await _read_body(receive)
        if raw is None:
            return
        body, streaming, wants_usage = prepare(raw)
        refused = vllm_fields.refusal(body, endpoint == "chat_completions") if body else None
        if refused:
            self.metrics.request_done(self.label(body.get("model")), endpoint, 400)
            return await _json_error(send, 400, refused[1], None, param=refused[0])
        if streaming:
            raw = json.dumps(body).encode()
            scope = _with_headers(scope, {b"content-length"}, {b"content-length": str(len(raw)).encode()})
        call = _Call(self, endpoint, self.label((body or {}).get("model")), wants_usage, send)
        try:
            await self.app(scope, _replay(raw, receive), call)
        finally:
            call.done(499 if call.first is not None else 500)  # no-op when the response completed

    async def _metrics(self, scope, receive, send):
        parts, start = [], {}

        async def capture(msg):
            if msg["type"] == "http.response.start":
                start.update(msg)
            elif msg["type"] == "http.response.body":
                parts.append(msg.get("body", b""))

        await self.app(_with_headers(scope, {b"accept-encoding"}), receive, capture)
        theirs = b"".join(parts) if start.get("status") == 200 else b""
        text = self.metrics.render() + theirs
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", CONTENT_TYPE.encode()), (b"content-length", str(len(text)).encode())]})
        await send({"type": "http.response.body", "body": text})

    async def _lora(self, scope, receive, send, load: bool):
        raw = await _read_body(receive)
        if raw is None:
            return
        try:
            req = json.loads(raw)
            name = req["lora_name"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            return await self.app(scope, _replay(raw, receive), send)  # vLLM answers the 400/422
        if load:
            error = self._check(name, str(req.get("lora_path") or ""))
            if error:
                return await _json_error(send, 400, error, "invalid_adapter")
        status = {}

        async def watch(msg):
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
            await send(msg)

        await self.app(scope, _replay(raw, receive), watch)
        if status.get("code") == 200:
            if load:
                self.adapters.add(name)
                self.metrics.adapter_added(name)
            else:
                self.adapters.discard(name)
                self.metrics.adapter_removed(name)

    def _check(self, name: str, path: str) -> str | None:
        from modelyard.runtime.adapters import AdapterError, validate_adapter

        if self.max_rank is None:
            return ("LoRA is not enabled on this server: declare at least one adapter in spec.adapters, "
                    "or add --enable-lora to spec.serving.args")
        try:
            validate_adapter(path, self.model_dir, max_rank=self.max_rank, name=name)
        except AdapterError as exc:
            return exc.message
        return None
