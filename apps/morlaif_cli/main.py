"""The `morlaif` command line. Each service adds its subcommands here; heavy imports stay inside them."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from feedback_worker.cli import app as feedback_app
from morlaif import envvars
from pm_server.cli import serve
from pm_server.pm_cli import app as pm_app
from policy_trainer.cli import app as ppo_app
from policy_trainer.eval_cli import app as eval_app
from policy_trainer.pipeline_cli import sample, sft

app = typer.Typer(
    name="morlaif",
    help="Multi-objective reward serving for RLHF/RLAIF: per-principle preference models over HTTP.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve)
app.command("sample")(sample)
app.command("sft")(sft)
app.add_typer(feedback_app, name="feedback")
app.add_typer(pm_app, name="pm")
app.add_typer(ppo_app, name="ppo")
app.add_typer(eval_app, name="eval")


def _json_option(value: str | None, name: str) -> Any:
    if value is None:
        return None
    try:
        if value.startswith("@"):
            return json.loads(Path(value[1:]).read_text())
        return json.loads(value)
    except (OSError, json.JSONDecodeError) as e:
        raise typer.BadParameter(f"not valid JSON ({e})", param_hint=name) from e


@app.command("score")
def score(
    input: Annotated[
        Path,
        typer.Argument(
            help='JSONL file: one {"prompt", "response"} (or "messages") '
            'object per line; an "id" field keys resumption.',
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    output: Annotated[Path, typer.Argument(help="JSONL file to append scored records to (resumes if present).")],
    url: Annotated[str, typer.Option(envvar="MORLAIF_URL", help="PM server URL.")] = "http://127.0.0.1:8000",
    principles: Annotated[str | None, typer.Option(help="Comma-separated principles (default: all loaded).")] = None,
    scalarizer: Annotated[str | None, typer.Option(help="Add a scalarized `reward`: linear, soft_max_min, ...")] = None,
    weights: Annotated[str | None, typer.Option(help='JSON weights {"helpfulness": 1, ...} or @file.json.')] = None,
    params: Annotated[str | None, typer.Option(help='JSON scalarizer parameters, e.g. {"temperature": 0.5}.')] = None,
    scalarizer_file: Annotated[
        Path | None,
        typer.Option(help="Scalarizer, weights and params from a JSON file, e.g. the weights.json of `pm eval`."),
    ] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Scores without calibration (normalize=false).")] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=512, help="Records per request.")] = 64,
    condition: Annotated[
        Path | None,
        typer.Option(
            help="Also write reward-conditioned training records here (prompts carrying their response's scores, "
            "standard-scaled, for `morlaif sft`), and the scaling beside them (<name>.scaling.json)."
        ),
    ] = None,
) -> None:
    """Bulk-score a JSONL file through a running PM server, with a progress bar; rerun to resume.

    Records are {"prompt", "response"}, chat "messages", or HH-RLHF transcripts {"chosen", "rejected"} (the
    chosen response is scored). A record that cannot be scored (not UTF-8 or JSON, a missing field, text that is
    not valid Unicode or too long) is named (file:line), written to OUTPUT.rejected.jsonl, and the others are
    scored; the exit status is then 2. The API key comes from MORLAIF_API_KEY. Examples:

        morlaif score pairs.jsonl scored.jsonl --scalarizer soft_max_min --weights '{"helpfulness": 1}'
        morlaif score dialogues.jsonl scored.jsonl --condition conditioned.jsonl   # then: morlaif sft conditioned.jsonl
    """
    from morlaif.client import MorlaifClient
    from morlaif.errors import ClientError
    from morlaif.jsonl import JsonlError
    from morlaif_cli.bulk import score_file

    w = _json_option(weights, "--weights")
    p = _json_option(params, "--params")
    if scalarizer_file is not None:
        from morlaif.protocol import ScalarizerSpec

        if scalarizer is not None or w is not None or p is not None:
            raise typer.BadParameter("give --scalarizer-file or --scalarizer/--weights/--params, not both")
        try:
            spec = ScalarizerSpec.from_file(scalarizer_file)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--scalarizer-file") from None
        scalarizer, w, p = spec.name, spec.weights, spec.params
    names = [x.strip() for x in principles.split(",") if x.strip()] if principles else None
    try:
        with MorlaifClient(url, api_key=os.environ.get(envvars.API_KEY)) as client:
            scored, skipped, rejected = score_file(
                client,
                input,
                output,
                principles=names,
                scalarizer=scalarizer,
                weights=w,
                params=p,
                normalize=not raw,
                batch_size=batch_size,
            )
    except JsonlError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except ClientError as e:
        typer.echo(f"error: the PM server at {url} refused or failed: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"scored {scored} records ({skipped} already in {output})", err=True)
    if rejected:
        from morlaif_cli.bulk import rejected_path

        for r in rejected[:20]:
            typer.echo(f"error: {r.message}", err=True)
        more = f" ({len(rejected) - 20} more not shown)" if len(rejected) > 20 else ""
        typer.echo(
            f"error: {len(rejected)} records could not be scored{more}; they are in {rejected_path(output)}",
            err=True,
        )
        raise typer.Exit(2)
    if condition is not None:
        from policy_trainer.conditioning import scaling_path, write_conditioning

        try:
            n, scaling = write_conditioning(output, condition, principles=names)
        except JsonlError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        typer.echo(
            f"wrote {n} conditioned records to {condition} (principles {', '.join(scaling.principles)}; scaling in "
            f"{scaling_path(condition)})",
            err=True,
        )


@app.command("up")
def up(
    host: Annotated[str, typer.Option(help="Bind address of the PM server.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the PM server.")] = 8000,
    base: Annotated[str, typer.Option(help="Base model: minilm (embedded), a path or a hub id.")] = "minilm",
    adapter_root: Annotated[Path, typer.Option(help="Adapter packages to serve (the default ones).")] = Path(
        "adapters"
    ),
    scalarizer_file: Annotated[
        Path | None,
        typer.Option(help="Default scalarizer of /get_reward (default: ADAPTER_ROOT/weights.json when present)."),
    ] = None,
    rules_file: Annotated[Path | None, typer.Option(help="Rule principles (default: brevity, no_refusal).")] = None,
    runs_dir: Annotated[Path, typer.Option(help="PPO runs the console shows (RUNS_DIR/<run>/metrics.jsonl).")] = Path(
        "runs"
    ),
    feedback: Annotated[
        bool, typer.Option("--feedback", help="Also run a feedback worker (SQLite store, the local judge).")
    ] = False,
    judge: Annotated[str, typer.Option(help="The worker's judge: `local` or a model at --judge-base-url.")] = "local",
    judge_base_url: Annotated[
        str | None, typer.Option(envvar="MORLAIF_JUDGE_BASE_URL", help="OpenAI-compatible judge endpoint.")
    ] = None,
    store: Annotated[str, typer.Option(envvar="MORLAIF_STORE_URL", help="The worker's label store.")] = (
        "sqlite:///var/labels.db"
    ),
    ready_timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for the PM server to be ready.")] = 300,
) -> None:
    """Run the stack on this machine: the PM server (MiniLM base, the default adapters) and, with
    --feedback, a feedback worker; no Docker, no database server.

    Prints the URLs and an example call once the server is ready, streams every service's log with its
    name as prefix, and stops everything on Ctrl-C. Keys: with MORLAIF_API_KEY and MORLAIF_ADMIN_KEY set
    the server requires them; without, it runs keyless, which is allowed on a loopback address only.
    """
    import threading

    import httpx
    from pydantic_settings import BaseSettings, SettingsConfigDict

    from morlaif.runs import STOP_SIGNALS, signal_exit_code
    from morlaif_cli.up import Service, Supervisor, install_stop_handlers, port_in_use, wait_ready

    class Keys(BaseSettings):  # read as the server reads them: the environment first, then ./.env
        model_config = SettingsConfigDict(env_prefix="MORLAIF_", env_file=".env", extra="ignore")
        api_key: str = ""
        admin_key: str = ""

    keys = Keys()
    api_key = keys.api_key
    keyed = bool(keys.api_key) and bool(keys.admin_key)
    from pm_server.serving.config import is_loopback

    if not keyed and not is_loopback(host):
        typer.echo(
            f"error: --host {host} is reachable from the network: set MORLAIF_API_KEY and MORLAIF_ADMIN_KEY "
            "(16+ characters each) first",
            err=True,
        )
        raise typer.Exit(2)
    if port_in_use(host, port):
        typer.echo(f"error: {host}:{port} is already in use (another `morlaif up`?): stop it or pass --port", err=True)
        raise typer.Exit(2)
    if scalarizer_file is None and (adapter_root / "weights.json").is_file():
        scalarizer_file = adapter_root / "weights.json"
    me = [sys.executable, "-m", "morlaif"]
    serve_argv = [
        *me,
        "serve",
        "--host",
        host,
        "--port",
        str(port),
        "--base",
        base,
        "--adapter-root",
        str(adapter_root),
    ]
    if scalarizer_file is not None:
        serve_argv += ["--scalarizer-file", str(scalarizer_file)]
    if rules_file is not None:
        serve_argv += ["--rules-file", str(rules_file)]
    serve_argv += ["--runs-dir", str(runs_dir)]
    if not keyed:
        serve_argv.append("--insecure-dev")
    services = [Service("pm_server", serve_argv)]
    if feedback:
        worker = [*me, "feedback", "run", "--judge", judge, "--store", store, "--follow", "--quiet"]
        if judge_base_url:
            worker += ["--base-url", judge_base_url]
        services.append(Service("feedback_worker", worker))

    stop = threading.Event()
    restore = install_stop_handlers(stop)
    sup = Supervisor()
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    code = 0
    try:
        sup.start(services)
        why = wait_ready(url + "/readyz", sup, "pm_server", ready_timeout, stop)
        if why is None:
            auth = ' -H "Authorization: Bearer $MORLAIF_API_KEY"' if keyed else ""
            headers = {"Authorization": f"Bearer {api_key}"} if keyed else {}
            try:
                listed = httpx.get(url + "/v1/principles", headers=headers, timeout=10).json()["principles"]
                names = ", ".join(f"{p['name']} {p.get('version') or p.get('kind', '')}".strip() for p in listed)
            except (httpx.HTTPError, KeyError, ValueError, TypeError):
                names = "(see /v1/principles)"
            body = '{"items": [{"prompt": "What is the capital of France?", "response": "Paris."}]}'
            lines = [
                "morlaif is up (Ctrl-C stops everything)",
                f"  PM server        {url}  (API docs {url}/docs, metrics {url}/metrics)",
                f"  console          {url}/  (scores, weights, adapters, live metrics, runs in {runs_dir}/)",
                f"  principles       {names}",
            ]
            if scalarizer_file is not None:
                lines.append(f"  /get_reward      scalarized as {scalarizer_file} says")
            if feedback:
                lines.append(f"  feedback worker  judge {judge!r}, store {store}; give it work with `morlaif feedback`")
            lines += [
                "  try:",
                f"    curl -s {url}/v1/score -H 'Content-Type: application/json'{auth} -d '{body}'",
            ]
            if keyed and not os.environ.get(envvars.API_KEY):
                lines.append("  (the key is in ./.env: `set -a; . ./.env; set +a` puts it in your shell first)")
            sup.say("morlaif", "\n".join(lines))
            gone = sup.wait(until=stop.is_set)
        else:
            gone = sup.exited()
            if not stop.is_set():
                sup.say("morlaif", f"error: {why}")
                code = 1
        if gone is not None:
            sup.say("morlaif", f"{gone[0]} exited with code {gone[1]}; stopping the others")
            code = 1
        elif stop.is_set():
            sup.say("morlaif", "stopping")
    finally:
        codes = sup.stop()
        restore()
    if stop.is_set() and code == 0:
        # killed by the signal, or caught it and exited 128 + its number (the CLI's own SIGTERM handling)
        clean = {0} | {-sig for sig in STOP_SIGNALS} | {signal_exit_code(sig) for sig in STOP_SIGNALS}
        sup.say("morlaif", "stopped: " + ", ".join(f"{n} ({'ok' if c in clean else c})" for n, c in codes.items()))
    raise typer.Exit(code)


def main() -> None:
    from morlaif.runs import exit_on_sigterm

    exit_on_sigterm()  # PID 1 in a container ignores SIGTERM otherwise; long loops and servers refine it
    app()


if __name__ == "__main__":
    main()
