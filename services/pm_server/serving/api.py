"""The HTTP face of the PM server: ~20-line routes over `ScoringService`, errors mapped in one place."""

import asyncio
import functools
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from morlaif import __version__
from morlaif.errors import MorlaifError
from morlaif.protocol import (
    AdapterAction,
    ClassifyRequest,
    ClassifyResponse,
    CompareRequest,
    CompareResponse,
    ErrorResponse,
    LoadAdapterRequest,
    ModelList,
    OpenRLHFRewardRequest,
    OpenRLHFRewardResponse,
    PrinciplesResponse,
    ScalarizerDescription,
    ScalarizeRequest,
    ScalarizeResponse,
    ScalarizerSpec,
    ScalarizersResponse,
    ScoreRequest,
    ScoreResponse,
    error_field,
    first_error,
)
from morlaif.scalarize import SCALARIZERS
from pm_server.model.base import BaseModel
from pm_server.serving import console
from pm_server.serving.config import ServerSettings
from pm_server.serving.errors import ClientGone, TooLarge, Unauthorized, as_service_error, error_response
from pm_server.serving.service import ScoringService

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 409, 413, 422, 429, 503)
}


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


async def _unless_disconnected(request: Request, work: Awaitable[Any], poll_s: float = 0.1) -> Any:
    """Await `work`, cancelling it when the client goes away (its queued rows are then dropped)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()


def create_app(settings: ServerSettings, *, base: BaseModel | None = None) -> FastAPI:
    """The PM server app. The model loads in a background thread at start-up; /readyz says when it is done."""
    service = ScoringService(settings, base=base)
    load_error: list[str] = []

    def _load() -> None:
        if settings.trusted_networks:
            logger.warning(
                "scoring without a key from the trusted networks %s (MORLAIF_TRUSTED_NETWORKS); admin routes still "
                "need the admin key",
                ", ".join(settings.trusted_networks),
            )
        try:
            service.start()
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
            load_error.append(f"{type(e).__name__}: {e}")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        t = threading.Thread(target=_load, name="morlaif-load", daemon=True)
        t.start()
        yield
        service.stop()

    app = FastAPI(
        title="morlaif PM server",
        version=__version__,
        description="Per-principle preference models on one base; batched scoring and scalarized rewards.",
        lifespan=lifespan,
        responses=_ERRORS,
    )
    app.state.service = service
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)

    # ------------------------------------------------------------------------------------------ auth
    def _key_matches(request: Request, *keys: Any) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        ok = False
        for key in keys:
            if key is not None:  # compare against every key: timing does not say which one matched
                ok |= hmac.compare_digest(token.encode(), key.get_secret_value().encode())
        return ok

    def require_key(request: Request) -> None:
        if settings.insecure_dev and settings.api_key is None:
            return
        if settings.trusted_networks and settings.trusts(request.client.host if request.client else None):
            return  # an operator-trusted network (for trainers that cannot send a key); admin routes stay keyed
        if not _key_matches(request, settings.api_key, settings.admin_key):
            raise Unauthorized("missing or invalid API key (Authorization: Bearer <key>)")

    def require_admin(request: Request) -> None:
        if settings.insecure_dev and settings.admin_key is None:
            return
        if not _key_matches(request, settings.admin_key):
            raise Unauthorized(
                "admin endpoints need the admin key (Authorization: Bearer <admin key>)",
                code="invalid_admin_key",
            )

    def get_service(request: Request) -> ScoringService:
        return request.app.state.service  # type: ignore[no-any-return]

    Service = Annotated[ScoringService, Depends(get_service)]
    scoring = [Depends(require_key)]
    admin = [Depends(require_admin)]

    # ---------------------------------------------------------------------------------------- errors
    @app.exception_handler(MorlaifError)
    async def _morlaif_error(request: Request, e: MorlaifError) -> JSONResponse:
        error = as_service_error(e)
        service.metrics.failures.labels(reason=error.code).inc()
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        first = first_error(e)
        param = error_field(first)
        if first.get("type") == "json_invalid":
            service.metrics.failures.labels(reason="malformed_json").inc()
            return error_response(
                400, f"malformed JSON body: {first.get('msg')}", type="invalid_request_error", code="malformed_json"
            )
        service.metrics.failures.labels(reason="invalid_request").inc()
        msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        message = f"{param}: {msg}" if param else msg
        return error_response(422, message, type="invalid_request_error", code="invalid_request", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error_response(e.status_code, str(e.detail), type=type_, code=f"http_{e.status_code}")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        logger.error("unhandled error on %s %s: %s", request.method, request.url.path, type(e).__name__, exc_info=e)
        service.metrics.failures.labels(reason="internal").inc()
        return error_response(500, "internal error; the server log has details", type="server_error", code="internal")

    def timed(endpoint: str) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
        hist = service.metrics.request_latency.labels(endpoint=endpoint)

        def deco(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    hist.observe(time.perf_counter() - t0)

            return wrapper

        return deco

    # ---------------------------------------------------------------------------------------- routes
    @app.post("/v1/score", dependencies=scoring, tags=["scoring"])
    @timed("score")
    async def score(req: ScoreRequest, svc: Service, request: Request) -> ScoreResponse:
        """Per-principle scores (and the scalarized reward, if asked) of (prompt, response) items."""
        return await _unless_disconnected(request, svc.score(req))  # type: ignore[no-any-return]

    @app.post("/v1/compare", dependencies=scoring, tags=["scoring"])
    @timed("compare")
    async def compare(req: CompareRequest, svc: Service, request: Request) -> CompareResponse:
        """P(A better than B) per principle, and for the scalarized reward when a scalarizer is given."""
        return await _unless_disconnected(request, svc.compare(req))  # type: ignore[no-any-return]

    @app.post("/get_reward", dependencies=scoring, tags=["scoring"])
    @timed("get_reward")
    async def get_reward(req: OpenRLHFRewardRequest, svc: Service, request: Request) -> OpenRLHFRewardResponse:
        """OpenRLHF's remote reward model contract, scalarized with the server's default scalarizer."""
        return await _unless_disconnected(request, svc.get_reward(req))  # type: ignore[no-any-return]

    @app.post("/classify", dependencies=scoring, tags=["vllm"])
    @timed("classify")
    async def classify(req: ClassifyRequest, svc: Service, request: Request) -> ClassifyResponse:
        """vLLM's classification route for clients of reward models served by vLLM (veRL's discriminative reward
        model): `model` is a principle, or `reward` (default) for the default scalarized reward."""
        return await _unless_disconnected(request, svc.classify(req))  # type: ignore[no-any-return]

    @app.get("/v1/models", dependencies=scoring, tags=["vllm"])
    async def models(svc: Service) -> ModelList:
        """vLLM's model list: `reward` (the default scalarized reward) and every served principle."""
        return svc.models()

    @app.get("/v1/principles", dependencies=scoring, tags=["scoring"])
    async def principles(svc: Service) -> PrinciplesResponse:
        """The served principles: kind, version, calibration, metrics and provenance."""
        return svc.principles()

    @app.post("/v1/adapters", dependencies=admin, tags=["admin"])
    async def load_adapter(req: LoadAdapterRequest, svc: Service) -> AdapterAction:
        """Load, or replace, a principle from a package inside the adapter root."""
        return await svc.adapters.load(req)

    @app.delete("/v1/adapters/{name}", dependencies=admin, tags=["admin"])
    async def unload_adapter(name: str, svc: Service) -> AdapterAction:
        """Stop serving a principle; requests already admitted still finish with it."""
        return await svc.adapters.unload(name)

    @app.post("/v1/scalarize", dependencies=scoring, tags=["scoring"])
    async def scalarize_scores(req: ScalarizeRequest, svc: Service) -> ScalarizeResponse:
        """Scalarize scores already computed (the console's weight sliders): no model work."""
        return svc.scalarize(req)

    @app.get("/v1/scalarizers", dependencies=scoring, tags=["scoring"])
    async def scalarizers() -> ScalarizersResponse:
        """The scalarizers, their parameters and defaults, and the server's default scalarizer."""
        return ScalarizersResponse(
            scalarizers=[
                ScalarizerDescription(name=i.name, summary=i.summary, monotone=i.monotone, params=i.params)
                for i in SCALARIZERS.values()
            ],
            default=ScalarizerSpec(
                name=settings.default_scalarizer,
                weights=settings.default_weights,
                params=settings.default_scalarizer_params,
            ),
        )

    @app.get("/v1/stats", dependencies=scoring, tags=["console"])
    async def stats(svc: Service) -> console.StatsResponse:
        """The server's metrics as JSON: per-principle score histograms, counts, model time."""
        return console.stats(svc.metrics)

    @app.get("/v1/runs", dependencies=scoring, tags=["console"])
    async def runs() -> console.RunsResponse:
        """PPO runs in the server's runs directory (MORLAIF_RUNS_DIR)."""
        return await asyncio.to_thread(console.list_runs, settings.runs_dir)

    @app.get("/v1/runs/{name}", dependencies=scoring, tags=["console"])
    async def run_curves(name: str) -> console.RunCurves:
        """A run's reward, KL and per-principle score curves, with warnings of reward hacking."""
        curves = await asyncio.to_thread(console.read_run, settings.runs_dir, name)
        if curves is None:
            where = "no runs directory is configured (MORLAIF_RUNS_DIR)" if settings.runs_dir is None else None
            raise StarletteHTTPException(404, where or f"no run named {name!r} in the runs directory")
        return curves

    # --------------------------------------------------------------------------------------- console
    page_headers = {
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }

    @app.get("/", include_in_schema=False)
    async def console_page() -> FileResponse:
        return FileResponse(console.STATIC_DIR / "index.html", headers=page_headers)

    app.mount("/console", StaticFiles(directory=console.STATIC_DIR), name="console")

    @app.get("/healthz", tags=["health"])
    async def healthz() -> JSONResponse:
        if load_error:
            return error_response(503, f"start-up failed: {load_error[0]}", type="server_error", code="start_failed")
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", tags=["health"])
    async def readyz(svc: Service) -> JSONResponse:
        if not svc.ready:
            why = f"start-up failed: {load_error[0]}" if load_error else "loading the base model and adapters"
            return error_response(503, why, type="server_error", code="not_ready")
        return JSONResponse({"status": "ready", "principles": svc.registry.names()})

    @app.get(
        "/metrics",
        dependencies=scoring,
        tags=["health"],
        responses={
            200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
        },
    )
    async def metrics(svc: Service) -> PlainTextResponse:
        return PlainTextResponse(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
