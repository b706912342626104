"""The PM server's routes: one module-level `router`, each route a few lines over the app's state.

`api.create_app` puts the state on the app and includes `router`: ``app.state.service`` (the `ScoringService`,
with its `AdapterManager` as ``.adapters``), ``app.state.settings`` (`ServerSettings`) and ``app.state.load_error``
(why start-up failed, if it did). Routes read them through the dependencies `get_service`, `get_adapters` and
`get_settings`. Keys: `require_key` guards scoring, the console's data and /metrics; `require_admin` guards loading
and unloading adapters. Errors are raised (`errors.ServiceError`) and answered by the app's exception handlers.
"""

import asyncio
import hmac
import time
from collections.abc import Awaitable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from morlaif.protocol import (
    AdapterAction,
    ClassifyRequest,
    ClassifyResponse,
    CompareRequest,
    CompareResponse,
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
)
from morlaif.scalarize import SCALARIZERS
from pm_server.serving import console
from pm_server.serving.adapters import AdapterManager
from pm_server.serving.config import ServerSettings
from pm_server.serving.errors import ClientGone, Unauthorized, error_response
from pm_server.serving.service import ScoringService

__all__ = ["TIMED", "get_adapters", "get_service", "get_settings", "require_admin", "require_key", "router"]

#: the routes whose latency `morlaif_request_latency_seconds` records, by its ``endpoint`` label
TIMED = ("score", "compare", "get_reward", "classify")

router = APIRouter()


# ------------------------------------------------------------------------------------------- state
def get_service(request: Request) -> ScoringService:
    """The app's `ScoringService` (``app.state.service``)."""
    return request.app.state.service


def get_adapters(request: Request) -> AdapterManager:
    """The app's `AdapterManager` (the service's ``adapters``)."""
    return get_service(request).adapters


def get_settings(request: Request) -> ServerSettings:
    """The app's `ServerSettings` (``app.state.settings``)."""
    return request.app.state.settings


Service = Annotated[ScoringService, Depends(get_service)]
Adapters = Annotated[AdapterManager, Depends(get_adapters)]
Settings = Annotated[ServerSettings, Depends(get_settings)]


# -------------------------------------------------------------------------------------------- auth
def _key_matches(request: Request, *keys: SecretStr | None) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    ok = False
    for key in keys:
        if key is not None:  # compare against every key: timing does not say which one matched
            ok |= hmac.compare_digest(token.encode(), key.get_secret_value().encode())
    return ok


def require_key(request: Request, settings: Settings) -> None:
    """Scoring routes: the API key or the admin key as ``Authorization: Bearer <key>``.

    No key is needed with `insecure_dev` and no `api_key`, or from a `trusted_networks` address. Raises
    `Unauthorized` (401, ``invalid_api_key``).
    """
    if settings.insecure_dev and settings.api_key is None:
        return
    if settings.trusted_networks and settings.trusts(request.client.host if request.client else None):
        return  # an operator-trusted network (for trainers that cannot send a key); admin routes stay keyed
    if not _key_matches(request, settings.api_key, settings.admin_key):
        raise Unauthorized("missing or invalid API key (Authorization: Bearer <key>)")


def require_admin(request: Request, settings: Settings) -> None:
    """Admin routes: the admin key as ``Authorization: Bearer <key>`` (not needed with `insecure_dev` and no
    `admin_key`). Raises `Unauthorized` (401, ``invalid_admin_key``)."""
    if settings.insecure_dev and settings.admin_key is None:
        return
    if not _key_matches(request, settings.admin_key):
        raise Unauthorized(
            "admin endpoints need the admin key (Authorization: Bearer <admin key>)",
            code="invalid_admin_key",
        )


scoring = [Depends(require_key)]
admin = [Depends(require_admin)]


# ------------------------------------------------------------------------------------------ helpers
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


async def _timed(endpoint: str, svc: ScoringService, request: Request, work: Awaitable[Any]) -> Any:
    """`work` awaited under `_unless_disconnected`, its time (answered or failed) in the endpoint's latency."""
    t0 = time.perf_counter()
    try:
        return await _unless_disconnected(request, work)
    finally:
        svc.metrics.request_latency.labels(endpoint=endpoint).observe(time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------- scoring
@router.post("/v1/score", dependencies=scoring, tags=["scoring"])
async def score(req: ScoreRequest, svc: Service, request: Request) -> ScoreResponse:
    """Per-principle scores (and the scalarized reward, if asked) of (prompt, response) items."""
    return await _timed("score", svc, request, svc.score(req))


@router.post("/v1/compare", dependencies=scoring, tags=["scoring"])
async def compare(req: CompareRequest, svc: Service, request: Request) -> CompareResponse:
    """P(A better than B) per principle, and for the scalarized reward when a scalarizer is given."""
    return await _timed("compare", svc, request, svc.compare(req))


@router.post("/get_reward", dependencies=scoring, tags=["scoring"])
async def get_reward(req: OpenRLHFRewardRequest, svc: Service, request: Request) -> OpenRLHFRewardResponse:
    """OpenRLHF's remote reward model contract, scalarized with the server's default scalarizer."""
    return await _timed("get_reward", svc, request, svc.get_reward(req))


@router.post("/classify", dependencies=scoring, tags=["vllm"])
async def classify(req: ClassifyRequest, svc: Service, request: Request) -> ClassifyResponse:
    """vLLM's classification route for clients of reward models served by vLLM (veRL's discriminative reward
    model): `model` is a principle, or `reward` (default) for the default scalarized reward."""
    return await _timed("classify", svc, request, svc.classify(req))


@router.get("/v1/models", dependencies=scoring, tags=["vllm"])
async def models(svc: Service) -> ModelList:
    """vLLM's model list: `reward` (the default scalarized reward) and every served principle."""
    return svc.models()


@router.get("/v1/principles", dependencies=scoring, tags=["scoring"])
async def principles(svc: Service) -> PrinciplesResponse:
    """The served principles: kind, version, calibration, metrics and provenance."""
    return svc.principles()


# ------------------------------------------------------------------------------------------- admin
@router.post("/v1/adapters", dependencies=admin, tags=["admin"])
async def load_adapter(req: LoadAdapterRequest, adapters: Adapters) -> AdapterAction:
    """Load, or replace, a principle from a package inside the adapter root."""
    return await adapters.load(req)


@router.delete("/v1/adapters/{name}", dependencies=admin, tags=["admin"])
async def unload_adapter(name: str, adapters: Adapters) -> AdapterAction:
    """Stop serving a principle; requests already admitted still finish with it."""
    return await adapters.unload(name)


# ------------------------------------------------------------------------------------- scalarizers
@router.post("/v1/scalarize", dependencies=scoring, tags=["scoring"])
async def scalarize_scores(req: ScalarizeRequest, svc: Service) -> ScalarizeResponse:
    """Scalarize scores already computed (the console's weight sliders): no model work."""
    return svc.scalarize(req)


@router.get("/v1/scalarizers", dependencies=scoring, tags=["scoring"])
async def scalarizers(settings: Settings) -> ScalarizersResponse:
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


# ----------------------------------------------------------------------------------------- console
@router.get("/v1/stats", dependencies=scoring, tags=["console"])
async def stats(svc: Service) -> console.StatsResponse:
    """The server's metrics as JSON: per-principle score histograms, counts, model time."""
    return console.stats(svc.metrics)


@router.get("/v1/runs", dependencies=scoring, tags=["console"])
async def runs(settings: Settings) -> console.RunsResponse:
    """PPO runs in the server's runs directory (MORLAIF_RUNS_DIR)."""
    return await asyncio.to_thread(console.list_runs, settings.runs_dir)


@router.get("/v1/runs/{name}", dependencies=scoring, tags=["console"])
async def run_curves(name: str, settings: Settings) -> console.RunCurves:
    """A run's reward, KL and per-principle score curves, with warnings of reward hacking."""
    curves = await asyncio.to_thread(console.read_run, settings.runs_dir, name)
    if curves is None:
        where = "no runs directory is configured (MORLAIF_RUNS_DIR)" if settings.runs_dir is None else None
        raise StarletteHTTPException(404, where or f"no run named {name!r} in the runs directory")
    return curves


_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@router.get("/", include_in_schema=False)
async def console_page() -> FileResponse:
    return FileResponse(console.STATIC_DIR / "index.html", headers=_PAGE_HEADERS)


# ------------------------------------------------------------------------------------------ health
@router.get("/healthz", tags=["health"])
async def healthz(request: Request) -> JSONResponse:
    load_error: list[str] = request.app.state.load_error
    if load_error:
        return error_response(503, f"start-up failed: {load_error[0]}", type="server_error", code="start_failed")
    return JSONResponse({"status": "ok"})


@router.get("/readyz", tags=["health"])
async def readyz(svc: Service, request: Request) -> JSONResponse:
    if not svc.ready:
        load_error: list[str] = request.app.state.load_error
        why = f"start-up failed: {load_error[0]}" if load_error else "loading the base model and adapters"
        return error_response(503, why, type="server_error", code="not_ready")
    return JSONResponse({"status": "ready", "principles": svc.registry.names()})


@router.get(
    "/metrics",
    dependencies=scoring,
    tags=["health"],
    responses={
        200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
    },
)
async def metrics(svc: Service) -> PlainTextResponse:
    return PlainTextResponse(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)
