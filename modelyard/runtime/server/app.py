"""The OpenAI-compatible HTTP layer (FastAPI): models, completions, chat completions with SSE
streaming, LoRA load/unload (vLLM's endpoints and shapes), /health and /metrics."""
from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from modelyard.runtime.metrics import CONTENT_TYPE, ServingMetrics
from modelyard.runtime.server import errors, generate, protocol
from modelyard.runtime.server.engine import ServingEngine
from modelyard.runtime.server.errors import APIError


@dataclass
class ServerState:
    engine: ServingEngine
    metrics: ServingMetrics
    ready: bool = False
    error: str | None = None

    def require_ready(self) -> ServingEngine:
        if not self.ready:
            raise errors.not_ready()
        return self.engine

    def names(self) -> list[str]:
        return [self.engine.served_model_name, *self.engine.adapters()]


async def _parse(request: Request, model_cls):
    return generate.validate(await generate.read_body(request), model_cls)


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="modelyard", docs_url=None, redoc_url=None)
    errors.install(app)

    @app.get("/health")
    async def health():
        if state.error:
            return errors.error_response(APIError(503, state.error, type="service_unavailable"))
        state.require_ready()
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        state.require_ready()
        return protocol.model_list(state.names(), "modelyard", state.engine.served_model_name,
                                   state.engine.served_model_name)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate.generate(state, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate.generate(state, request, chat=True)

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request):
        req = await _parse(request, protocol.LoadAdapterRequest)
        engine = state.require_ready()
        if req.lora_name in state.names():
            raise errors.bad_request(f"The lora adapter '{req.lora_name}' has already been loaded.",
                                     param="lora_name")
        await engine.load_adapter(req.lora_name, req.lora_path)
        state.metrics.adapter_added(req.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request):
        req = await _parse(request, protocol.UnloadAdapterRequest)
        engine = state.require_ready()
        if req.lora_name not in engine.adapters():
            raise APIError(404, f"The lora adapter '{req.lora_name}' cannot be found.",
                           type="not_found_error", param="lora_name", code="adapter_not_found")
        await engine.unload_adapter(req.lora_name)
        state.metrics.adapter_removed(req.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")

    return app
