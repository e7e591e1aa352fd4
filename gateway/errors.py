"""The gateway's one exception tree. Each class carries the HTTP status it is answered with.

    GatewayError                      500 server_error
    ├── InvalidRequest                400 invalid_request_error   (malformed JSON, schema errors; names the field)
    │   └── HeadersTooLarge           431
    ├── AuthenticationFailed          401 authentication_error     (never says why, beyond a generic phrase)
    ├── PermissionDenied              403 permission_error         (blocked by policy, denylist)
    ├── NotFound                      404 not_found_error           (unknown model, unknown route)
    ├── PayloadTooLarge               413 invalid_request_error
    ├── RateLimited                   429 rate_limit_error          (carries Retry-After / RateLimit-* headers)
    ├── UpstreamError                 502 upstream_error            (backend answered badly or the connection broke)
    ├── ServiceUnavailable            503 service_unavailable       (pool saturated, no healthy backend, draining)
    └── UpstreamTimeout               504 timeout

``to_openai_error`` turns any of them into the OpenAI error body ``{"error": {"message", "type", "param",
"code"}}``. Anything that is not a ``GatewayError`` is answered as a bare 500 with no detail: stack traces
never reach a client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class GatewayError(Exception):
    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return to_openai_error(self.message, self.error_type, self.code, self.param)


class InvalidRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"
    default_code = "invalid_request"


class HeadersTooLarge(InvalidRequest):
    status = 431
    default_code = "headers_too_large"


class ExpectationFailed(InvalidRequest):
    status = 417
    default_code = "expectation_failed"


class AuthenticationFailed(GatewayError):
    status = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    error_type = "permission_error"
    default_code = "blocked"


class NotFound(GatewayError):
    status = 404
    error_type = "not_found_error"
    default_code = "not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    error_type = "invalid_request_error"
    default_code = "payload_too_large"


class RateLimited(GatewayError):
    status = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class UpstreamError(GatewayError):
    status = 502
    error_type = "upstream_error"
    default_code = "bad_gateway"


class ServiceUnavailable(GatewayError):
    status = 503
    error_type = "service_unavailable"
    default_code = "unavailable"


class UpstreamTimeout(GatewayError):
    status = 504
    error_type = "timeout"
    default_code = "upstream_timeout"


def to_openai_error(message: str, error_type: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


INTERNAL_ERROR_BODY: dict[str, Any] = to_openai_error(
    "The gateway failed to process the request.", "server_error", "internal_error"
)
