"""The 503 placeholder that answers on vLLM's port while the model loads (vllm_launch.py)."""
from __future__ import annotations

import json
import socket
import time

from modelyard.runtime.engines import vllm_launch


def _get_health(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        chunks = []
        while chunk := c.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_placeholder_answers_503_model_loading_until_ready_even_while_the_caller_blocks():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    vllm_launch.start_placeholder(sock)
    # This thread now makes blocking calls only, as vLLM's loop does while its engine starts:
    # the placeholder answers from its own thread and loop.
    head, _, body = _get_health(port).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503")
    assert json.loads(body)["error"]["code"] == "model_loading"
    time.sleep(0.2)
    assert _get_health(port).startswith(b"HTTP/1.1 503")
    vllm_launch.ready().thread.join(10)
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        refused = False
    except OSError:
        refused = True
    assert refused and "server" not in vllm_launch._placeholder  # ready() stopped it


def test_the_placeholder_stops_when_vllms_app_reports_its_startup_complete():
    import asyncio

    from modelyard.runtime.engines import vllm_middleware

    calls, sent = [], []

    async def app(scope, receive, send):  # an ASGI app's lifespan, as Starlette runs it
        await send({"type": "lifespan.startup.begin-work"})
        calls.append(("before", list(vllm_middleware.ON_READY)))
        await send({"type": "lifespan.startup.complete"})

    async def send(message):
        sent.append(message["type"])

    vllm_middleware.ON_READY.append(lambda: calls.append("ready"))
    wrapped = vllm_middleware.ModelyardMiddleware(app, {"served_model_name": "m"})
    asyncio.run(wrapped({"type": "lifespan"}, None, send))
    assert calls[0][0] == "before" and len(calls[0][1]) == 1  # not stopped while vLLM starts up
    assert calls[1:] == ["ready"] and not vllm_middleware.ON_READY
    assert sent == ["lifespan.startup.begin-work", "lifespan.startup.complete"]
