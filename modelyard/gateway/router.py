"""The OpenAI-compatible router (KubeAI's modelproxy): picks a replica by the request's ``model``,
holds the request while none is ready, and forwards it; the replica's answer (status, headers,
body, an SSE stream chunk by chunk) comes back unchanged, errors included."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
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
    client: httpx.AsyncClient | None = None

    def http(self) -> httpx.AsyncClient:
        if self.client is None:
            self.client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0),
                                            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200))
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


async def _send(gw: Gateway, addr: str, request: Request, raw: bytes) -> httpx.Response:
    headers = {k: v for k, v in request.headers.items() if k in FORWARD_HEADERS}
    req = gw.http().build_request("POST", addr + request.url.path, content=raw, headers=headers)
    return await gw.http().send(req, stream=True)


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
        except httpx.TransportError as exc:
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
    headers = {k: v for k, v in upstream.headers.items() if k in RETURN_HEADERS}

    async def finish():
        await upstream.aclose()
        route.release(addr)
        gw.metrics.in_flight.labels(route.namespace, model).dec()
        gw.metrics.requests.labels(route.namespace, model, str(upstream.status_code)).inc()

    if upstream.headers.get("content-type", "").startswith("text/event-stream"):
        return StreamingResponse(upstream.aiter_raw(), status_code=upstream.status_code, headers=headers,
                                 background=BackgroundTask(finish))
    try:
        content = await upstream.aread()
    finally:
        await finish()
    return Response(content, status_code=upstream.status_code, headers=headers)


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
