"""The `morlaif` command line. Each service adds its subcommands here; heavy imports stay inside them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from feedback_worker.cli import app as feedback_app
from pm_server.cli import serve
from pm_server.pm_cli import app as pm_app
from policy_trainer.cli import app as ppo_app
from policy_trainer.eval_cli import app as eval_app

app = typer.Typer(
    name="morlaif",
    help="Multi-objective reward serving for RLHF/RLAIF: per-principle preference models over HTTP.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve)
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
) -> None:
    """Bulk-score a JSONL file through a running PM server, with a progress bar; rerun to resume.

    The API key comes from MORLAIF_API_KEY. Example:

        morlaif score pairs.jsonl scored.jsonl --scalarizer soft_max_min --weights '{"helpfulness": 1}'
    """
    from morlaif.bulk import score_file
    from morlaif.client import MorlaifClient
    from morlaif.errors import ClientError
    from morlaif.jsonl import JsonlError

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
        with MorlaifClient(url, api_key=os.environ.get("MORLAIF_API_KEY")) as client:
            scored, skipped = score_file(
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
