"""API errors rendered as `Status` objects, worded like kube-apiserver's."""
from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "details": self.details, "code": self.code}


def qualified(rt) -> str:
    return f"{rt.plural}.{rt.group}" if rt.group else rt.plural


def not_found(rt, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{qualified(rt)} "{name}" not found',
                    {"name": name, "group": rt.group, "kind": rt.plural})


def already_exists(rt, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{qualified(rt)} "{name}" already exists',
                    {"name": name, "group": rt.group, "kind": rt.plural})


def conflict(rt, name: str, why: str = "the object has been modified; please apply your changes "
                                          "to the latest version and try again") -> ApiError:
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {qualified(rt)} "{name}": {why}',
                    {"name": name, "group": rt.group, "kind": rt.plural})


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def _cause_reason(message: str) -> str:
    if message.startswith("Unsupported value"):
        return "FieldValueNotSupported"
    if message.startswith("Required value"):
        return "FieldValueRequired"
    if message.startswith("field not declared"):
        return "FieldValueInvalid"
    return "FieldValueInvalid"


def invalid(rt, name: str, errors: list[tuple[str, str]]) -> ApiError:
    """422 Invalid; each (field, message) becomes a cause, as `kubectl apply` prints them."""
    parts = [f"{field}: {msg}" if field else msg for field, msg in errors]
    joined = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    kind_group = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
    causes = [{"reason": _cause_reason(msg), "message": msg, "field": field} for field, msg in errors]
    return ApiError(422, "Invalid", f'{kind_group} "{name}" is invalid: {joined}',
                    {"name": name, "group": rt.group, "kind": rt.kind, "causes": causes})
