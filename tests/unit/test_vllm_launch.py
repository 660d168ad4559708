"""The 503 placeholder that answers on vLLM's port while the model loads (vllm_launch.py)."""
from __future__ import annotations

import asyncio
import json
import socket

from modelyard.runtime.engines import vllm_launch


def test_placeholder_answers_503_model_loading_until_ready():
    async def scenario():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        vllm_launch._placeholder["server"] = await asyncio.start_server(vllm_launch._answer_loading, sock=sock)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        await writer.drain()
        raw = await reader.read()
        writer.close()
        vllm_launch.ready()
        await asyncio.sleep(0.05)
        try:
            await asyncio.open_connection("127.0.0.1", port)
            refused = False
        except OSError:
            refused = True
        return raw, refused

    raw, refused = asyncio.run(scenario())
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503")
    assert json.loads(body)["error"]["code"] == "model_loading"
    assert refused and "server" not in vllm_launch._placeholder  # ready() stopped it
