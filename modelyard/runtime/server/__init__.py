"""OpenAI-compatible HTTP server shared by in-process engines (accelerate).

``run(engine, metrics, load, host, port, guard)`` starts listening at once (``/health`` answers 503),
loads the model in a background thread, then answers 200. A load failure stops the server and
``run`` returns 1 with the reason on stderr.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Callable

from modelyard.runtime.errors import RuntimeStepError, fail_step
from modelyard.runtime.guard import Guard, GuardConfig
from modelyard.runtime.metrics import ServingMetrics
from modelyard.runtime.server.app import ServerState, create_app

log = logging.getLogger("modelyard.serve")


def run(engine, metrics: ServingMetrics, load: Callable[[], None], host: str, port: int,
        guard: GuardConfig | None = None) -> int:
    import uvicorn

    state = ServerState(engine=engine, metrics=metrics)
    config = uvicorn.Config(Guard(create_app(state), guard or GuardConfig()), host=host, port=port, log_level="info",
                            access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)

    def loader() -> None:
        t0 = time.perf_counter()
        try:
            load()
        except Exception as exc:  # shown to the user, the pod's log and its termination log, then exit 1
            state.error = f"loading the model failed: {exc}"
            reason = exc.reason if isinstance(exc, RuntimeStepError) else "ModelLoadFailed"
            fail_step(RuntimeStepError(reason, state.error), "serve")
            server.should_exit = True
            return
        seconds = time.perf_counter() - t0
        metrics.model_load_seconds.set(seconds)
        state.ready = True
        print(f"modelyard serve: model loaded in {seconds:.1f}s; serving {', '.join(state.names())} "
              f"on http://{host}:{port}/v1", file=sys.stderr, flush=True)

    threading.Thread(target=loader, name="model-loader", daemon=True).start()
    try:
        server.run()
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()
    return 1 if state.error else 0
