"""Errors the service raises, each with the HTTP answer it gets, and the one builder of error bodies.

Every error the server answers has the shape of `morlaif.protocol.ErrorResponse`:
``{"error": {"message": "...", "type": "...", "code": "...", "param": ...}}``, built by `error_response` alone.
A `ServiceError` carries its HTTP `status`, `type`, `code` and `headers`; `as_service_error` says how the errors
of the layers below serving (the shared library's, the model layer's), which know no HTTP, are answered.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from morlaif.errors import MorlaifError, ScalarizeError
from morlaif.protocol import ErrorDetail, ErrorResponse
from pm_server.model.package import PackageError

__all__ = [
    "ServiceError",
    "InvalidRequest",
    "UnknownPrinciple",
    "NotFound",
    "Unauthorized",
    "VersionConflict",
    "Overloaded",
    "TooLarge",
    "Unavailable",
    "ModelFailure",
    "ClientGone",
    "as_service_error",
    "error_response",
]


def _escaped(text: str) -> str:
    # an error never fails to encode: text the client sent with lone surrogates is escaped, not echoed raw
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(
    status: int,
    message: str,
    *,
    type: str,
    code: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The server's one error answer: `ErrorResponse` as JSON with HTTP `status` and `headers`.

    `type` is the error family (``invalid_request_error``, ``authentication_error``, ``not_found_error``,
    ``conflict_error``, ``rate_limit_error``, ``server_error``), `code` a stable machine-readable reason, `param`
    the request field it is about (dotted, e.g. ``items.0.response``) or None. Lone UTF-16 surrogates in
    `message` or `param` are written as ``\\udxxx`` escapes, so the body always encodes as UTF-8.
    """
    detail = ErrorDetail(
        message=_escaped(message), type=type, code=code, param=None if param is None else _escaped(param)
    )
    return JSONResponse(ErrorResponse(error=detail).model_dump(), status_code=status, headers=headers)


class ServiceError(MorlaifError):
    """An error answered with HTTP `status`, the body's `type` and `code`, and `field` as its ``param``.

    The message answered is ``"{field}: {message}"`` (just `message` without a field), as `str()` gives it.
    """

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message, field=field)
        if code is not None:
            self.code = code

    @property
    def headers(self) -> dict[str, str] | None:
        """Response headers the answer carries besides the body (None: none)."""
        return None

    def response(self) -> JSONResponse:
        """This error as the server answers it (`error_response`)."""
        return error_response(
            self.status, str(self), type=self.type, code=self.code, param=self.field, headers=self.headers
        )


class InvalidRequest(ServiceError):
    pass


class UnknownPrinciple(ServiceError):
    code = "unknown_principle"


class NotFound(ServiceError):
    status = 404
    type = "not_found_error"
    code = "not_found"


class Unauthorized(ServiceError):
    """No key, or not the key the route needs (``invalid_admin_key`` on the admin routes)."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class VersionConflict(ServiceError):
    status = 409
    type = "conflict_error"
    code = "version_not_loaded"


class TooLarge(ServiceError):
    status = 413
    code = "request_too_large"


class Overloaded(ServiceError):
    """The queue is full: 429 with ``Retry-After`` (whole seconds, at least 1) from `retry_after_s`."""

    status = 429
    type = "rate_limit_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(max(1, round(self.retry_after_s)))}


class Unavailable(ServiceError):
    status = 503
    type = "server_error"
    code = "not_ready"


class ModelFailure(ServiceError):
    """The model gave a non-finite score: answered as an error, never as a reward."""

    status = 500
    type = "server_error"
    code = "non_finite_score"


class ClientGone(ServiceError):
    """The client disconnected before its answer was ready: 499 (nginx's code), which nobody is left to read."""

    status = 499
    code = "client_gone"

    def __init__(self, message: str = "client closed the request") -> None:
        super().__init__(message)


def as_service_error(e: MorlaifError) -> ServiceError:
    """`e` as the `ServiceError` it is answered as: a `ServiceError` itself; a `PackageError` with its own code,
    404 ``not_found_error`` when the package is not there, else 400; a `ScalarizeError` 400 ``invalid_scalarizer``;
    any other `MorlaifError` 400 ``invalid_request``. The message and field are kept."""
    if isinstance(e, ServiceError):
        return e
    if isinstance(e, PackageError):
        return (NotFound if e.status == 404 else InvalidRequest)(e.message, field=e.field, code=e.code)
    code = "invalid_scalarizer" if isinstance(e, ScalarizeError) else "invalid_request"
    return InvalidRequest(e.message, field=e.field, code=code)
