"""Errors as data: one exception type carrying the OpenAI error shape.

Raised anywhere, rendered once per transport: an HTTP JSON body with the status code, or a
WebSocket ``error`` event carrying the same payload plus ``status``.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An OpenAI-shaped error: ``{"error": {"message", "type", "param", "code"}}`` + status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def payload(self) -> dict[str, Any]:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}

    def body(self) -> dict[str, Any]:
        return {"error": self.payload()}

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.code!r}, {self.message!r}, param={self.param!r})"


def invalid_request(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def invalid_value(param: str, value: object, allowed: list[str] | None = None) -> ApiError:
    message = f"Invalid value: {value!r}."
    if allowed:
        message += " Supported values are: " + ", ".join(repr(a) for a in allowed) + "."
    return ApiError(400, message, param=param, code="invalid_value")


def missing_parameter(param: str) -> ApiError:
    return ApiError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def model_not_found(model: str) -> ApiError:
    return ApiError(400, f"The requested model '{model}' does not exist.", param="model", code="model_not_found")


def previous_response_not_found(response_id: str) -> ApiError:
    return ApiError(
        400,
        f"Previous response with id '{response_id}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
    )


def response_not_found(response_id: str) -> ApiError:
    return ApiError(404, f"No response found with id '{response_id}'.", param="response_id", code="not_found")


def server_error(message: str = "The server had an error while processing your request.") -> ApiError:
    return ApiError(500, message, type="server_error", code="server_error")


# One constructor a status: the status, the error's type and the headers that go with it live here.


def unauthorized(message: str, *, code: str, headers: dict[str, str] | None = None) -> ApiError:
    return ApiError(401, message, code=code, headers=headers)


def forbidden(message: str, *, code: str, param: str | None = None) -> ApiError:
    return ApiError(403, message, param=param, code=code)


def not_found(message: str, *, param: str | None = None, code: str = "not_found") -> ApiError:
    return ApiError(404, message, param=param, code=code)


def request_timeout(message: str) -> ApiError:
    """The body did not arrive in time: the connection closes (its rest may still be on the way)."""
    return ApiError(408, message, code="request_timeout", headers={"connection": "close"})


def too_large(message: str, *, code: str = "request_too_large") -> ApiError:
    return ApiError(413, message, code=code)


def unsupported_media_type(message: str, *, param: str, code: str) -> ApiError:
    return ApiError(415, message, param=param, code=code)


def upgrade_required(message: str, *, code: str) -> ApiError:
    return ApiError(426, message, code=code)


def too_many_requests(
    message: str, *, code: str, retry_after: str | None = None, headers: dict[str, str] | None = None
) -> ApiError:
    """429, of type ``requests`` as OpenAI's rate limits are; ``retry_after`` in seconds."""
    headers = {**({"retry-after": retry_after} if retry_after is not None else {}), **(headers or {})}
    return ApiError(429, message, type="requests", code=code, headers=headers)


def unavailable(message: str, *, code: str | None, retry_after: str | None = None, close: bool = False) -> ApiError:
    """503: try again shortly (``retry_after`` seconds); ``close``: and on another connection."""
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    if close:
        headers["connection"] = "close"
    return ApiError(503, message, type="server_error", code=code, headers=headers or None)
