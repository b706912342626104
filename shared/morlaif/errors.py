"""The exception tree of the shared library.

Every error names the field it is about when there is one, so that the server can answer
`{"error": {"message", "type", "code", "param"}}` with the field in `param` and the message, and the CLI can
point at the input.
"""

from __future__ import annotations


class MorlaifError(Exception):
    """Base class of every error this project raises on purpose."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class ScalarizeError(MorlaifError, ValueError):
    """A scalarizer name, weight or parameter is invalid."""


class ClientError(MorlaifError):
    """Base class of the errors `morlaif.client` raises."""


class InvalidInputError(ClientError, ValueError):
    """Input the client will not send: text that is not valid Unicode (a lone surrogate), a malformed item.

    `field` names it as the server would (``items[3].response``), so no request is made for it.
    """


class APIStatusError(ClientError):
    """The server answered with a 4xx or 5xx that retrying will not (or did not) fix.

    The fields of the server's `morlaif.protocol.ErrorDetail`: `message`, `error_type` (its ``type``), `code`
    and `param`, the request field the error is about (``items[0].response``) or None. ``str()`` names `param`
    when the message does not already.
    """

    def __init__(
        self, message: str, *, status_code: int, error_type: str = "", code: str = "", param: str | None = None
    ) -> None:
        super().__init__(message, field=param)
        self.status_code = status_code
        self.error_type = error_type
        self.code = code
        self.param = param

    def __str__(self) -> str:
        where = f" (param: {self.param})" if self.param and self.param not in self.message else ""
        return f"HTTP {self.status_code} ({self.error_type or 'error'}): {self.message}{where}"


class RetriesExhaustedError(ClientError):
    """Every attempt failed with a retryable error (transport error, 429 or 503)."""

    def __init__(self, message: str, *, attempts: int, last_error: BaseException | None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.last_error = last_error
