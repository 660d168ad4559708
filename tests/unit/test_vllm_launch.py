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
