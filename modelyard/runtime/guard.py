"""What protects a serving process, as one ASGI middleware both engines run in front of their app
(the accelerate FastAPI app; vLLM's own server through ``vllm_middleware``):

- **API keys**: with a key file, every route except ``/health``, ``/ping`` and (unless
  ``metrics_auth``) ``/metrics`` needs ``Authorization: Bearer <key>``; otherwise 401 in OpenAI's
  error shape, the same words whatever was wrong (no hint of a valid key). Keys are never logged.
- **Body limit**: a body over ``max_request_bytes`` gets 413 (read and dropped up to a bound, so
  the client sees the answer and the connection stays usable).
- **Bounded queue**: at most ``max_queued`` generation requests are admitted at once (running or
  waiting); the next gets 429 with ``Retry-After``.
- **Adapter admin is not public**: ``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter`` (and
  vLLM's other admin routes) answer only to loopback clients (modelyard's adapter sync runs in the
  same pod), and a load only for an adapter declared in the Model (``--adapter`` or
  ``--adapters-file``) at the declared folder: no client can make the server read a path it names.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from modelyard.apikeys import KeyFile

DEFAULT_MAX_REQUEST_BYTES = 4 * 2**20
DEFAULT_MAX_QUEUED = 512
DRAIN_LIMIT = 64 * 2**20           # an oversized body is read and dropped up to this, then the connection closes
RETRY_AFTER_S = 1
OPEN_PATHS = frozenset({"/health", "/ping"})
GENERATION = frozenset({"/v1/completions", "/v1/chat/completions"})
LOAD, UNLOAD = "/v1/load_lora_adapter", "/v1/unload_lora_adapter"
ADMIN = frozenset({LOAD, UNLOAD, "/sleep", "/wake_up", "/reset_prefix_cache", "/reset_mm_cache",
                   "/collective_rpc", "/scale_elastic_ep", "/pause", "/resume", "/start_profile", "/stop_profile"})
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclass
class GuardConfig:
    api_key_file: str | None = None
    metrics_auth: bool = False
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_queued: int = DEFAULT_MAX_QUEUED
    adapters: dict[str, str] = field(default_factory=dict)   # declared at start (--adapter)
    adapters_file: str | None = None                          # declared while serving (re-read)

    def to_json(self) -> dict:
        return {"api_key_file": self.api_key_file, "metrics_auth": self.metrics_auth,
                "max_request_bytes": self.max_request_bytes, "max_queued": self.max_queued,
                "adapters": self.adapters, "adapters_file": self.adapters_file}

    @classmethod
    def from_json(cls, data: dict | None) -> "GuardConfig":
        return cls(**(data or {}))

    @classmethod
    def from_args(cls, args, adapters: dict[str, str]) -> "GuardConfig":
        return cls(api_key_file=getattr(args, "api_key_file", None),
                   metrics_auth=bool(getattr(args, "metrics_auth", False)),
                   max_request_bytes=getattr(args, "max_request_bytes", None) or DEFAULT_MAX_REQUEST_BYTES,
                   max_queued=getattr(args, "max_queued_requests", None) or DEFAULT_MAX_QUEUED,
                   adapters=dict(adapters), adapters_file=getattr(args, "adapters_file", None))


def error_body(message: str, type: str, code: str | None, param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type, "param": param, "code": code}}).encode()


async def send_error(send, status: int, body: bytes, headers: list | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


UNAUTHORIZED = error_body("Incorrect or missing API key: send the header 'Authorization: Bearer <key>'.",
                          "invalid_request_error", "invalid_api_key")
BUSY = error_body("The server has too many requests queued; retry after the time in the Retry-After header.",
                  "rate_limit_error", "too_many_requests")


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers") or []:
        if k.lower() == name:
            return v.decode("latin-1")
    return None


class _TooLarge(Exception):
    pass


class Guard:
    def __init__(self, app, config: GuardConfig):
        self.app, self.config = app, config
        self.keys = KeyFile(config.api_key_file) if config.api_key_file else None
        self.active = 0  # generation requests admitted and not finished

    def _needs_key(self, path: str) -> bool:
        if self.keys is None or path in OPEN_PATHS:
            return False
        return path != "/metrics" or self.config.metrics_auth

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if self._needs_key(path) and not self.keys.check_header(_header(scope, b"authorization")):
            return await send_error(send, 401, UNAUTHORIZED, [(b"www-authenticate", b"Bearer")])
        if path in ADMIN and (scope.get("client") or ("",))[0] not in LOOPBACK:
            return await send_error(send, 403, error_body(
                f"{path} is reachable only from inside the serving pod (modelyard's adapter sync); declare "
                f"adapters in the Model's spec.adapters instead", "permission_error", "forbidden"))
        if scope["method"] in ("POST", "PUT", "PATCH"):
            try:
                body = await self._read(scope, receive)
            except _TooLarge:
                return await self._too_large(send)
            if body is None:
                return  # the client went away
            if path == LOAD and (refusal := self._undeclared(body)):
                return await send_error(send, 403, refusal)
            receive = replay(body, receive)
        if scope["method"] == "POST" and path in GENERATION:
            return await self._admitted(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _admitted(self, scope, receive, send):
        if self.active >= self.config.max_queued:
            return await send_error(send, 429, BUSY, [(b"retry-after", str(RETRY_AFTER_S).encode())])
        self.active += 1
        try:
            return await self.app(scope, receive, send)
        finally:
            self.active -= 1

    async def _read(self, scope, receive) -> bytes | None:
        limit = self.config.max_request_bytes
        declared = _header(scope, b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            await _drain(receive, int(declared))
            raise _TooLarge
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                if msg.get("more_body"):
                    await _drain(receive, DRAIN_LIMIT)
                raise _TooLarge
            chunks.append(chunk)
            if not msg.get("more_body"):
                return b"".join(chunks)

    async def _too_large(self, send):
        limit = self.config.max_request_bytes
        await send_error(send, 413, error_body(
            f"The request body is larger than this server accepts ({limit} bytes; modelyard serve "
            f"--max-request-bytes).", "invalid_request_error", "request_too_large"))

    def _undeclared(self, raw: bytes) -> bytes | None:
        try:
            req = json.loads(raw)
            name, path = str(req["lora_name"]), str(req["lora_path"])
        except (ValueError, KeyError, TypeError):
            return None  # the app answers the malformed request itself
        declared = {**self.config.adapters, **_adapters_file(self.config.adapters_file)}
        if name in declared and _same_path(declared[name], path):
            return None
        return error_body(f"adapter {name!r} at {path!r} is not declared for this server; runtime loading is "
                          f"only for adapters in the Model's spec.adapters (modelyard serve --adapter or "
                          f"--adapters-file)", "permission_error", "adapter_not_declared", "lora_path")


async def _drain(receive, most: int) -> None:
    """Read and drop the rest of a body (bounded), so the 413 reaches a client still sending."""
    seen = 0
    while seen <= min(most, DRAIN_LIMIT):
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
        seen += len(msg.get("body", b""))
        if not msg.get("more_body"):
            return


def replay(body: bytes, receive):
    """A ``receive`` that yields ``body`` once, then the client's own messages (disconnects)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _adapters_file(path: str | None) -> dict[str, str]:
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _same_path(a: str, b: str) -> bool:
    return a == b or Path(a).resolve() == Path(b).resolve()
