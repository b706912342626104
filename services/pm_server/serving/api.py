"""The PM server app: `create_app` builds it from `ServerSettings`; its routes are `routes.router`'s.

Here are the app's state, the request-body limit (`BodyLimit`), start-up (the model loads in a background thread;
/readyz says when it is done) and the exception handlers, which answer every error as `errors.error_response`
builds it: a `MorlaifError` as `errors.as_service_error` maps it, request validation as 400 (malformed JSON) or
422 naming the field, the framework's HTTP errors (404, 405) with their status, and anything else as 500.
"""

import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from morlaif import __version__
from morlaif.errors import MorlaifError
from morlaif.protocol import ErrorResponse, error_field, first_error
from pm_server.model.base import BaseModel
from pm_server.serving import console
from pm_server.serving.config import ServerSettings
from pm_server.serving.errors import TooLarge, as_service_error, error_response
from pm_server.serving.routes import TIMED, router
from pm_server.serving.service import ScoringService

__all__ = ["BodyLimit", "create_app"]

logger = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 409, 413, 422, 429, 503)
}


def create_app(settings: ServerSettings, *, base: BaseModel | None = None) -> FastAPI:
    """The PM server app for `settings`, serving `base` if given (else `settings.base_model`). The model loads in a
    background thread at start-up; /readyz says when it is done, /healthz if it failed."""
    app = FastAPI(
        title="morlaif PM server",
        version=__version__,
        description="Per-principle preference models on one base; batched scoring and scalarized rewards.",
        lifespan=_lifespan,
        responses=_ERRORS,
        exception_handlers=_EXCEPTION_HANDLERS,
    )
    app.state.settings = settings
    app.state.service = service = ScoringService(settings, base=base)
    app.state.load_error = []  # why start-up failed (one message), for /healthz and /readyz
    for endpoint in TIMED:  # each route's latency series is on /metrics (at 0) before its first request
        service.metrics.request_latency.labels(endpoint=endpoint)
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    app.include_router(router)
    app.mount("/console", StaticFiles(directory=console.STATIC_DIR), name="console")
    return app


# ------------------------------------------------------------------------------------------ start-up
def _start(app: FastAPI) -> None:
    """Load the model and the principles (`ScoringService.start`); a failure is logged and kept for /healthz."""
    settings: ServerSettings = app.state.settings
    if settings.trusted_networks:
        logger.warning(
            "scoring without a key from the trusted networks %s (MORLAIF_TRUSTED_NETWORKS); admin routes still "
            "need the admin key",
            ", ".join(settings.trusted_networks),
        )
    try:
        app.state.service.start()
        auth = "" if settings.api_key is None else ' -H "Authorization: Bearer $MORLAIF_API_KEY"'
        logger.info(
            "ready: curl -s http://%s:%d/v1/score -H 'content-type: application/json'%s "
            '-d \'{"items": [{"prompt": "Hi", "response": "Hello!"}]}\'',
            settings.host,
            settings.port,
            auth,
        )
    except Exception as e:
        logger.exception("the PM server failed to start")
        app.state.load_error.append(f"{type(e).__name__}: {e}")


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    t = threading.Thread(target=_start, args=(app,), name="morlaif-load", daemon=True)
    t.start()
    yield
    app.state.service.stop()


# -------------------------------------------------------------------------------------------- errors
def _count_failure(request: Request, reason: str) -> None:
    service: ScoringService = request.app.state.service
    service.metrics.failures.labels(reason=reason).inc()


async def _morlaif_error(request: Request, e: MorlaifError) -> Response:
    error = as_service_error(e)
    _count_failure(request, error.code)
    return error.response()


async def _validation_error(request: Request, e: RequestValidationError) -> Response:
    first = first_error(e)
    param = error_field(first)
    if first.get("type") == "json_invalid":
        _count_failure(request, "malformed_json")
        return error_response(
            400, f"malformed JSON body: {first.get('msg')}", type="invalid_request_error", code="malformed_json"
        )
    _count_failure(request, "invalid_request")
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    message = f"{param}: {msg}" if param else msg
    return error_response(422, message, type="invalid_request_error", code="invalid_request", param=param)


async def _http_error(request: Request, e: StarletteHTTPException) -> Response:
    type_ = "not_found_error" if e.status_code == 404 else "invalid_request_error"
    return error_response(e.status_code, str(e.detail), type=type_, code=f"http_{e.status_code}")


async def _unexpected(request: Request, e: Exception) -> Response:
    logger.error("unhandled error on %s %s: %s", request.method, request.url.path, type(e).__name__, exc_info=e)
    _count_failure(request, "internal")
    return error_response(500, "internal error; the server log has details", type="server_error", code="internal")


_EXCEPTION_HANDLERS: dict[int | type[Exception], Callable[[Request, Any], Coroutine[Any, Any, Response]]] = {
    MorlaifError: _morlaif_error,
    RequestValidationError: _validation_error,
    StarletteHTTPException: _http_error,
    Exception: _unexpected,
}


# ------------------------------------------------------------------------------------- body limit
class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413 before anything parses them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for k, v in scope.get("headers", []):
            if k == b"content-length" and v.isdigit() and int(v) > self.limit:
                await self._too_large(scope, receive, send)
                return
        # Buffer the body (at most `limit` bytes) before the app sees it: the framework would turn an
        # error raised mid-read into a generic 400.
        chunks: list[bytes] = []
        seen = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return  # client went away
            body = msg.get("body", b"")
            seen += len(body)
            if seen > self.limit:
                await self._too_large(scope, receive, send)
                return
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        resp = TooLarge(f"request body exceeds {self.limit} bytes").response()
        await resp(scope, receive, send)
