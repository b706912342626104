"""`morlaif serve`: run the PM server. Only typer is imported at module level (fast `--help`)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer


def serve(
    base: Annotated[
        str | None,
        typer.Option(help="Base model: `minilm` (embedded MiniLM-L6), a path, or a hub id. Env: MORLAIF_BASE_MODEL."),
    ] = None,
    adapter_root: Annotated[
        Path | None,
        typer.Option(
            help="Adapter package root; the newest version of each "
            "principle found there is served. Env: "
            "MORLAIF_ADAPTER_ROOT."
        ),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            help="auto (default: bfloat16 where the hardware computes it natively, a CPU with AVX512-BF16 or AMX "
            "or a CUDA GPU, about 1.8x faster with scores within about 1%; float32 elsewhere), float32 (scores "
            "exactly as trained) or bfloat16. Env: MORLAIF_DTYPE."
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1). Env: MORLAIF_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000). Env: MORLAIF_PORT.")] = None,
    rules_file: Annotated[
        Path | None,
        typer.Option(help="JSON list of rule principles (default: brevity and no_refusal). Env: MORLAIF_RULES_FILE."),
    ] = None,
    scalarizer_file: Annotated[
        Path | None,
        typer.Option(
            help="Default scalarizer of /get_reward: JSON {name, weights, params}, e.g. the weights.json "
            "`morlaif pm eval` fits. Env: MORLAIF_SCALARIZER_FILE."
        ),
    ] = None,
    runs_dir: Annotated[
        Path | None,
        typer.Option(
            help="PPO runs the console at / shows: RUNS_DIR/<run>/metrics.jsonl, as `morlaif ppo train` writes "
            "them (e.g. runs). Env: MORLAIF_RUNS_DIR."
        ),
    ] = None,
    insecure_dev: Annotated[
        bool,
        typer.Option(
            "--insecure-dev",
            help="Run without API keys: local development only, so refused unless --host is a loopback address.",
        ),
    ] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Serve per-principle preference models over HTTP (POST /v1/score, /v1/compare, /get_reward), and the
    console at / (scores as bars, weight sliders, the loaded adapters, live metrics and PPO runs).

    Keys come from the environment, never the command line: MORLAIF_API_KEY (scoring) and
    MORLAIF_ADMIN_KEY (loading and unloading adapters), each at least 16 characters. Without them the
    server refuses to start unless --insecure-dev is given. Every MORLAIF_* setting: docs/configuration.md.
    """
    from pydantic import ValidationError

    from pm_server.serving.config import ServerSettings, SettingsError

    overrides = {
        k: v
        for k, v in {
            "base_model": base,
            "dtype": dtype,
            "adapter_root": adapter_root,
            "host": host,
            "port": port,
            "rules_file": rules_file,
            "scalarizer_file": scalarizer_file,
            "runs_dir": runs_dir,
        }.items()
        if v is not None
    }
    if insecure_dev:
        overrides["insecure_dev"] = True
    try:
        settings = ServerSettings(**overrides)
    except (ValidationError, SettingsError) as e:
        typer.echo(f"error: cannot start the PM server: {_first_error(e)}", err=True)
        raise typer.Exit(2) from None
    if settings.rules_file is not None:
        from pm_server.serving.rules import RuleError, load_rules

        try:
            load_rules(settings.rules_file)
        except RuleError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not sys.stderr.isatty():  # a service's log (Docker, Kubernetes, `morlaif up`): log lines, no progress bars
        from morlaif.runs import quiet_libraries

        quiet_libraries()
    import uvicorn

    from pm_server.model.base import load_base
    from pm_server.serving.api import create_app

    try:  # before binding the port: a server that cannot load its base should not look alive
        base_model = load_base(
            settings.base_model, max_length=settings.max_length, device=settings.device, dtype=settings.dtype
        )
    except (OSError, ValueError) as e:
        typer.echo(f"error: cannot load base model {settings.base_model!r}: {e}", err=True)
        raise typer.Exit(2) from None
    if not settings.adapter_root.is_dir():
        logging.getLogger(__name__).warning(
            "adapter root %s does not exist: serving rule principles only", settings.adapter_root
        )
    try:
        app = create_app(settings, base=base_model)
    except ValueError as e:  # a policy tokenizer that cannot be loaded or read
        typer.echo(f"error: cannot start the PM server: {e}", err=True)
        raise typer.Exit(2) from None
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=settings.keep_alive_s,
        # the client address is the TCP peer's: uvicorn would otherwise take it from X-Forwarded-For on connections
        # from 127.0.0.1, and any local process (or a proxy passing the header on) could claim a trusted network
        proxy_headers=False,
    )


def _first_error(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        first = errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ()))
        msg = str(first.get("msg", e)).removeprefix("Value error, ")
        return f"{loc}: {msg}" if loc else msg
    return str(e)
