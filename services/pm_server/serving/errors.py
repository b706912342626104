"""Errors the service raises; `api` maps each to an HTTP status and the one error shape."""

from __future__ import annotations

from morlaif.errors import MorlaifError

__all__ = [
    "ServiceError",
    "InvalidRequest",
    "UnknownPrinciple",
    "NotFound",
    "VersionConflict",
    "Overloaded",
    "TooLarge",
    "Unavailable",
    "ModelFailure",
]


class ServiceError(MorlaifError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message, field=field)
        if code is not None:
            self.code = code


class InvalidRequest(ServiceError):
    pass


class UnknownPrinciple(ServiceError):
    code = "unknown_principle"


class NotFound(ServiceError):
    status = 404
    type = "not_found_error"
    code = "not_found"


class VersionConflict(ServiceError):
    status = 409
    type = "conflict_error"
    code = "version_not_loaded"


class TooLarge(ServiceError):
    status = 413
    code = "request_too_large"


class Overloaded(ServiceError):
    status = 429
    type = "rate_limit_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(ServiceError):
    status = 503
    type = "server_error"
    code = "not_ready"


class ModelFailure(ServiceError):
    """The model gave a non-finite score: answered as an error, never as a reward."""

    status = 500
    type = "server_error"
    code = "non_finite_score"
