"""OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``, for the errors the
gateway itself gives (an upstream replica's errors are forwarded unchanged)."""
from __future__ import annotations

from starlette.responses import JSONResponse


class GatewayError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param)


def model_not_found(name, available: list[str]) -> GatewayError:
    listed = ", ".join(available) if available else "none (no Model is ready)"
    return GatewayError(404, f"The model `{name}` does not exist. Available models: {listed}.",
                        type="not_found_error", param="model", code="model_not_found")


def unauthorized() -> GatewayError:
    return GatewayError(401, "Missing or invalid API key: send `Authorization: Bearer <key>`.",
                        type="authentication_error", code="invalid_api_key",
                        headers={"WWW-Authenticate": "Bearer"})


def unavailable(model: str, why: str, retry_after: int) -> GatewayError:
    return GatewayError(503, f"The model `{model}` has no ready replica: {why}. Retry after {retry_after}s.",
                        type="service_unavailable", code="model_unavailable",
                        headers={"Retry-After": str(retry_after)})


def bad_gateway(model: str, why: str) -> GatewayError:
    return GatewayError(502, f"Every replica of `{model}` failed to answer: {why}.",
                        type="bad_gateway", code="upstream_unreachable")
