"""The OpenAI-compatible router (KubeAI's modelproxy): picks a replica by the request's ``model``,
holds the request while none is ready, and forwards it; the replica's answer (status, headers,
body, an SSE stream chunk by chunk) comes back unchanged, errors included."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as HttpRoute

from modelyard.gateway import errors
from modelyard.gateway.errors import GatewayError
from modelyard.gateway.metrics import CONTENT_TYPE, GatewayMetrics
from modelyard.gateway.registry import HoldLimits, Registry, Route

FORWARD_HEADERS = ("authorization", "content-type", "accept", "x-request-id")
RETURN_HEADERS = ("content-type", "retry-after", "x-request-id", "www-authenticate")
MAX_TRIES = 3


@dataclass
class Gateway:
    registry: Registry = field(default_factory=Registry)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    limits: HoldLimits = field(default_factory=HoldLimits)
    wake: object = lambda: None          # tells the autoscaler a request is being held
    client: aiohttp.ClientSession | None = None

    def http(self) -> aiohttp.ClientSession:
        """The upstream client (aiohttp: a third of httpx's CPU per proxied request; see
        docs/benchmarks.md, gateway). Bodies pass through as the replica sent them."""
        if self.client is None:
            self.client = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0),
                connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=30),
                auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding"))
        return self.client


def _prompt(body: dict) -> str:
    """The text prefix hashing looks at: the prompt, or the messages in order."""
    if "messages" in body and isinstance(body["messages"], list):
        return "".join(str(m.get("content", "")) for m in body["messages"] if isinstance(m, dict))
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


def _parse(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise errors.bad_request("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise errors.bad_request("The request body must be a JSON object.")
    if "model" not in body:
        raise errors.bad_request("model: field required", param="model")
    return body


def _check_key(route: Route, request: Request) -> None:
    if route.key_file is not None and not route.key_file.check_header(request.headers.get("authorization")):
        raise errors.unauthorized()


async def _send(gw: Gateway, addr: str, request: Request, raw: bytes) -> aiohttp.ClientResponse:
    headers = {k: v for k, v in request.headers.items() if k in FORWARD_HEADERS}
    return await gw.http().post(addr + request.url.path, data=raw, headers=headers)


async def _forward(gw: Gateway, route: Route, model: str, adapter, request: Request, raw: bytes, prompt: str):
    """Acquire a replica, send, and on a connection failure try another (the failed one is
    marked not ready until the prober sees it again)."""
    last = ""
    for _ in range(MAX_TRIES):
        try:
            addr, waited = await route.acquire(adapter, prompt, gw.limits, gw.wake)
        except GatewayError as exc:
            gw.metrics.rejected.labels(route.namespace, model, "queue_full" if "waiting" in exc.message else "timeout").inc()
            raise
        gw.metrics.queue_wait.labels(route.namespace, model).observe(waited)
        try:
            return addr, await _send(gw, addr, request, raw)
        except aiohttp.ClientConnectionError as exc:
            route.release(addr)
            last = f"{addr}: {type(exc).__name__}"
            if addr in route.replicas:
                route.replicas[addr].ready = False
                route.notify()
    raise errors.bad_gateway(model, last)


async def _proxy(gw: Gateway, request: Request) -> Response:
    raw = await request.body()
    body = _parse(raw)
    route, adapter = gw.registry.resolve(body["model"])
    _check_key(route, request)
    model = route.name
    addr, upstream = await _forward(gw, route, model, adapter, request, raw, _prompt(body))
    gw.metrics.in_flight.labels(route.namespace, model).inc()
    headers = {k: v for k, v in upstream.headers.items() if k.lower() in RETURN_HEADERS}

    async def finish():
        if upstream.content.at_eof():
            upstream.release()  # the connection goes back to the pool
        else:
            upstream.close()  # the client went away mid-stream: closing tells the replica to stop
        route.release(addr)
        gw.metrics.in_flight.labels(route.namespace, model).dec()
        gw.metrics.requests.labels(route.namespace, model, str(upstream.status)).inc()

    if upstream.headers.get("content-type", "").startswith("text/event-stream"):
        return Relay(upstream, headers, finish)
    try:
        content = await upstream.read()
    finally:
        await finish()
    return Response(content, status_code=upstream.status, headers=headers)


class Relay(Response):
    """An SSE stream from the replica, passed on chunk by chunk as it arrives. When the client goes
    away (``http.disconnect``) the relay stops and the upstream connection is closed, so the
    replica cancels the generation; ``finish`` releases the replica's slot and the in-flight count
    however the stream ends. (Starlette's StreamingResponse skips its background task when an
    ASGI 2.4 server reports the disconnect by raising, which would leak the slot.)"""

    def __init__(self, upstream: aiohttp.ClientResponse, headers: dict, finish):
        self.upstream, self.finish, self.status_code, self.background = upstream, finish, upstream.status, None
        self.init_headers(headers)

    async def _relay(self, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.upstream.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope, receive, send) -> None:
        relay = asyncio.ensure_future(self._relay(send))

        async def until_disconnect():
            while (await receive())["type"] != "http.disconnect":
                pass
            relay.cancel()  # (a no-op once the stream is complete: the server then reports disconnect)

        watcher = asyncio.ensure_future(until_disconnect())
        try:
            await relay
        except asyncio.CancelledError:
            if not watcher.done():
                raise  # this request itself was cancelled (server shutdown)
        except OSError:
            pass  # the client's connection failed while writing
        finally:
            watcher.cancel()
            await self.finish()


def create_app(gw: Gateway) -> Starlette:
    async def generate(request: Request) -> Response:
        try:
            return await _proxy(gw, request)
        except GatewayError as exc:
            return exc.response()

    async def models(request: Request) -> Response:
        now = int(time.time())
        data = []
        for route in sorted(gw.registry.routes.values(), key=lambda r: r.name):
            data.append({"id": route.name, "object": "model", "created": now, "owned_by": "modelyard",
                         "root": route.name, "parent": None})
            data += [{"id": a, "object": "model", "created": now, "owned_by": "modelyard", "root": route.name,
                      "parent": route.name} for a in route.adapters]
        return JSONResponse({"object": "list", "data": data})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": len(gw.registry.routes)})

    async def metrics(request: Request) -> Response:
        for route in gw.registry.routes.values():
            gw.metrics.held.labels(route.namespace, route.name).set(route.held)
            gw.metrics.ready.labels(route.namespace, route.name).set(route.ready_count())
            gw.metrics.desired.labels(route.namespace, route.name).set(route.desired)
        return Response(gw.metrics.render(), media_type=CONTENT_TYPE)

    return Starlette(routes=[
        HttpRoute("/v1/chat/completions", generate, methods=["POST"]),
        HttpRoute("/v1/completions", generate, methods=["POST"]),
        HttpRoute("/v1/models", models, methods=["GET"]),
        HttpRoute("/health", health, methods=["GET"]),
        HttpRoute("/metrics", metrics, methods=["GET"]),
    ])
