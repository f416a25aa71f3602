"""The one error hierarchy of Bastion.

Every refusal or failure on the request path is a :class:`GatewayError`. Each class knows its
HTTP status, the OpenAI error ``type`` and ``code`` it is serialized with, and where the fault
lies (``source``: the client, the upstream, or the gateway itself). One serializer
(:mod:`bastion.pipeline.responses`) turns them into the OpenAI error body, so the official
clients raise the matching exception (401 -> ``AuthenticationError`` and so on).

Configuration problems are :class:`ConfigError`; they never become HTTP responses, only the CLI
turns them into an exit code.

::

    BastionError
    ├── ConfigError
    ├── EngineError                       (a managed model server failed to start)
    ├── RemoteError                       (the CLI could not do it on a remote gateway)
    └── GatewayError                      status  type
        ├── BadRequestError               400     invalid_request_error
        │   └── MalformedBodyError        400     invalid_request_error
        ├── AuthenticationError           401     authentication_error
        ├── PermissionDeniedError         403     permission_error
        ├── NotFoundError                 404     invalid_request_error
        │   └── ModelNotFoundError        404     invalid_request_error / model_not_found
        ├── MethodNotAllowedError         405     invalid_request_error
        ├── ConflictError                 409     invalid_request_error (admin API)
        ├── ConfigRefusedError            422     invalid_request_error (a reload refused)
        ├── RequestTimeoutError           408     invalid_request_error
        ├── UriTooLongError               414     invalid_request_error (server/protocol.py)
        ├── PayloadTooLargeError          413     invalid_request_error
        ├── UnsupportedMediaTypeError     415     invalid_request_error
        ├── RateLimitError                429     rate_limit_error
        │   └── QuotaExceededError        429     insufficient_quota
        ├── HeadersTooLargeError          431     invalid_request_error
        ├── WebSocketRefusedError         501     invalid_request_error (server/protocol.py)
        ├── InternalError                 500     server_error          (source: gateway)
        ├── ServiceUnavailableError       503     server_error          (source: gateway)
        │   ├── StoreUnavailableError     503     server_error          (the identity store)
        │   │   └── StoreTimeoutError     503                           (it did not answer in time)
        │   ├── LimiterBackendError       503     server_error          (limits/redis.py)
        │   └── NoUpstreamError           503     server_error          (every upstream down)
        └── UpstreamError                 502     upstream_error        (source: upstream)
            ├── UpstreamConnectError      502
            ├── UpstreamProtocolError     502
            └── UpstreamTimeoutError      504

Messages are written for the caller: they never carry a credential, a key hash, a stack trace
or an upstream address.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "BastionError",
    "ConfigError",
    "ConfigRefusedError",
    "ConflictError",
    "EngineError",
    "ErrorSource",
    "GatewayError",
    "HeadersTooLargeError",
    "InternalError",
    "MalformedBodyError",
    "MethodNotAllowedError",
    "ModelNotFoundError",
    "NoUpstreamError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RateLimitError",
    "RemoteError",
    "RequestTimeoutError",
    "ServiceUnavailableError",
    "StoreTimeoutError",
    "StoreUnavailableError",
    "UnsupportedMediaTypeError",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamTimeoutError",
]


class ErrorSource(StrEnum):
    """Where a fault lies: reported in logs and metrics, never used for decisions."""

    CLIENT = "client"
    UPSTREAM = "upstream"
    GATEWAY = "gateway"


class BastionError(Exception):
    """Base of every error Bastion raises on purpose."""


class ConfigError(BastionError):
    """The configuration is invalid. ``key`` names the offending setting when known."""

    def __init__(self, message: str, key: str | None = None) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class EngineError(BastionError):
    """A model server that Bastion manages could not be started or kept running."""


class RemoteError(BastionError):
    """A remote gateway's admin API refused or failed an operation the CLI asked for."""


class GatewayError(BastionError):
    """A refusal or failure that becomes an OpenAI-shaped HTTP error response."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None
    source: ErrorSource = ErrorSource.CLIENT
    default_message: str = "The request could not be served."
    audited: bool = False
    """True when whoever raised it already wrote it to the audit trail (admin refusals)."""

    def __init__(
        self,
        message: str | None = None,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        self.message = message or self.default_message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers
        super().__init__(self.message)


class BadRequestError(GatewayError):
    status = 400
    type = "invalid_request_error"
    default_message = "The request is invalid."


class MalformedBodyError(BadRequestError):
    default_message = "The request body is not valid JSON."
    code = "invalid_json"


class AuthenticationError(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"
    default_message = "Invalid or missing credentials."


class PermissionDeniedError(GatewayError):
    status = 403
    type = "permission_error"
    code = "permission_denied"
    default_message = "You are not allowed to perform this request."


class NotFoundError(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"
    default_message = "Not found."


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"
    default_message = "The model does not exist or you do not have access to it."


class MethodNotAllowedError(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"
    default_message = "Method not allowed."


class ConflictError(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"
    default_message = "The request conflicts with the current state."


class ConfigRefusedError(GatewayError):
    """A configuration reload was refused; the running configuration stays."""

    status = 422
    type = "invalid_request_error"
    code = "invalid_config"
    default_message = "The configuration was refused."


class RequestTimeoutError(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"
    default_message = "The request was not received in time."


class PayloadTooLargeError(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"
    default_message = "The request body is too large."


class UnsupportedMediaTypeError(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"
    default_message = "Unsupported content type."


class RateLimitError(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    default_message = "Too many requests; retry later."


class QuotaExceededError(RateLimitError):
    """A token budget (per day or month) is used up."""

    type = "insufficient_quota"
    code = "insufficient_quota"
    default_message = "The token budget for this period is used up."


class HeadersTooLargeError(GatewayError):
    status = 431
    type = "invalid_request_error"
    code = "headers_too_large"
    default_message = "Request headers too large."


class InternalError(GatewayError):
    status = 500
    type = "server_error"
    code = "internal_error"
    source = ErrorSource.GATEWAY
    default_message = "The gateway failed to serve the request."


class ServiceUnavailableError(GatewayError):
    status = 503
    type = "server_error"
    code = "service_unavailable"
    source = ErrorSource.GATEWAY
    default_message = "The service is not available."


class NoUpstreamError(ServiceUnavailableError):
    """Every upstream of the model is down or ejected: answered at once, never after a
    timeout per request."""

    code = "no_healthy_upstream"
    source = ErrorSource.UPSTREAM
    default_message = "No upstream server for this model is available; retry later."


class StoreUnavailableError(ServiceUnavailableError):
    """The identity store (SQLite or PostgreSQL) cannot be read or written."""

    code = "store_unavailable"
    default_message = "The identity store is not available."


class StoreTimeoutError(StoreUnavailableError):
    """The identity store did not answer within its deadline (frozen, or cut off by the
    network); the call may still have been carried out."""

    default_message = "The identity store did not answer in time."


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "bad_gateway"
    source = ErrorSource.UPSTREAM
    default_message = "The model server failed to answer."


class UpstreamConnectError(UpstreamError):
    code = "upstream_unreachable"
    default_message = "The model server could not be reached."


class UpstreamProtocolError(UpstreamError):
    code = "upstream_protocol_error"
    default_message = "The model server sent an invalid response."


class UpstreamTimeoutError(UpstreamError):
    status = 504
    code = "upstream_timeout"
    default_message = "The model server did not answer in time."
