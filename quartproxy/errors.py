"""OpenAI-style error envelopes.

Every failure a client can see is an :class:`ApiError`: routes raise it, one handler renders it.
Keeping status, type and code together here means a route cannot invent an envelope that clients'
SDKs would fail to parse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class ApiError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = "invalid_request_error"
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def payload(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        return orjson.dumps(self.payload())


def invalid(
    message: str, param: str | None = None, code: str = "invalid_request_error"
) -> ApiError:
    return ApiError(400, message, "invalid_request_error", code, param)


def invalid_json(message: str) -> ApiError:
    return ApiError(400, message, "invalid_request_error", "invalid_json")


def not_found(message: str, code: str = "not_found", param: str | None = None) -> ApiError:
    return ApiError(404, message, "invalid_request_error", code, param)


def model_not_found(model: str) -> ApiError:
    return not_found(
        f"The model {model} does not exist or you do not have access to it.",
        "model_not_found",
        "model",
    )


def method_not_allowed(allowed: list[str]) -> ApiError:
    return ApiError(
        405,
        "Method not allowed.",
        "invalid_request_error",
        "method_not_allowed",
        headers={"Allow": ", ".join(allowed)},
    )


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"Request body exceeds the limit of {limit} bytes.",
        "invalid_request_error",
        "request_too_large",
    )


def unauthorized() -> ApiError:
    return ApiError(
        401,
        "Invalid or missing API key. Send 'Authorization: Bearer <key>'.",
        "authentication_error",
        "invalid_api_key",
        headers={"WWW-Authenticate": "Bearer realm=api"},
    )


def concurrency_exceeded(kind: str, limit: int) -> ApiError:
    return ApiError(
        429,
        f"Too many concurrent {kind} (limit {limit}). Retry shortly.",
        "rate_limit_error",
        "concurrency_exceeded",
    )


def rate_limited(retry_after_s: int) -> ApiError:
    return ApiError(
        429,
        "Rate limit exceeded for this API key.",
        "rate_limit_error",
        "rate_limited",
        headers={"Retry-After": str(max(1, retry_after_s))},
    )


def backend_error(message: str) -> ApiError:
    return ApiError(502, message, "server_error", "backend_error")


def backend_unavailable(message: str) -> ApiError:
    return ApiError(503, message, "server_error", "backend_unavailable")


# A draining replica will not take the request back: retry soon, through the load balancer.
SHUTDOWN_RETRY_AFTER_S = 1


def shutting_down() -> ApiError:
    return ApiError(
        503, "The server is shutting down; retry on another instance.", "server_error",
        "shutting_down", headers={"Retry-After": str(SHUTDOWN_RETRY_AFTER_S)},
    )


def timeout(code: str, message: str) -> ApiError:
    return ApiError(504, message, "timeout_error", code)


def internal() -> ApiError:
    return ApiError(500, "Internal server error.", "server_error", "internal_error")
