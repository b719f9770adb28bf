"""Router errors: each carries the HTTP status and OpenAI error fields it maps to, once, here."""

from __future__ import annotations

from services.http_errors import ApiError

# What 429 and 503 answers tell clients to wait: about one registry heartbeat, enough for a
# restarted worker to register or a busy one to report room again.
RETRY_AFTER_SECONDS = 1


class RouterError(ApiError):
    """Base of every error the router answers with; subclasses fix status, type and code.

    The OpenAI-shaped body and the response come from the shared ApiError.
    """

    status = 500
    type = "internal_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None, retry_after: int | None = None):
        super().__init__(
            type(self).status, message, param=param, code=type(self).code,
            retry_after=retry_after,
        )


class InvalidRequest(RouterError):
    """The request is malformed or asks for something out of range."""

    status = 400
    type = "invalid_request_error"


class UnsupportedFeature(InvalidRequest):
    """The request is well formed but asks for a feature this server does not offer."""

    code = "unsupported_feature"


class ModelNotFound(InvalidRequest):
    code = "model_not_found"


class PromptTooLong(InvalidRequest):
    code = "context_length_exceeded"


class Unauthorized(RouterError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(RouterError):
    status = 404
    type = "not_found_error"


class MethodNotAllowed(RouterError):
    status = 405
    type = "invalid_request_error"


class BodyTooLarge(RouterError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class TooManyRequests(RouterError):
    """This router already has as many requests in flight as it allows."""

    status = 429
    type = "rate_limit_error"
    code = "too_many_requests"


class NoWorkerAvailable(RouterError):
    """No live worker of a role the request needs, or every one of them refused or failed."""

    status = 503
    type = "service_unavailable"
    code = "no_worker_available"


class WorkerFailed(RouterError):
    """A worker answered in a way the router cannot pass on (bad token, broken response)."""

    status = 502
    type = "upstream_error"
    code = "worker_failed"
