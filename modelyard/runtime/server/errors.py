"""OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status."""
from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class APIError(Exception):
    """An error a client caused or must know about, rendered in OpenAI's shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(name: str, available: list[str]) -> APIError:
    return APIError(404, f"The model `{name}` does not exist. Available models: {', '.join(available)}.",
                    param="model", code="model_not_found")


def not_ready() -> APIError:
    return APIError(503, "The model is still loading; retry when GET /health answers 200.",
                    type="service_unavailable", code="model_loading")


def context_too_long(limit: int, prompt: int, completion: int, where: str) -> APIError:
    return APIError(
        400,
        f"This model's maximum context length is {limit} tokens. However, you requested "
        f"{prompt + completion} tokens ({prompt} in the {where}, {completion} in the completion). "
        f"Please reduce the length of the {where} or completion.",
        param="messages" if where == "messages" else "prompt", code="context_length_exceeded")


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts, param = [], None
    for e in exc.errors():
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        field = ".".join(loc) or "body"
        param = param or field
        parts.append(f"{field}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request", param


def install(app) -> None:
    """Route every error through the OpenAI shape."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(bad_request(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(APIError(exc.status_code, str(exc.detail), type=kind))
