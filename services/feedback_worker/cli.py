"""`morlaif feedback ...`: fill and read the label store. Only typer is imported at module level."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from morlaif import envvars

app = typer.Typer(
    name="feedback",
    help="AI feedback: import preference data, enqueue judge jobs, watch their status, export labels.",
    no_args_is_help=True,
)

StoreOpt = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="MORLAIF_STORE_URL",
        help="Label store: a SQLAlchemy URL, sqlite:///path.db (default) or "
        "postgresql+psycopg://user@host/db. Env: MORLAIF_STORE_URL.",
    ),
]
DEFAULT_STORE = "sqlite:///var/labels.db"


def _open(url: str, **kw: int):  # -> Store
    from morlaif.store import StoreUnavailable, open_store

    try:
        return open_store(url, **kw)
    except StoreUnavailable as e:  # a bad URL or an unreachable server: its message hides the password
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@app.command("import")
def import_(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Pair JSONL ({prompt, chosen, rejected, principle}) or HH-RLHF transcripts (.jsonl or .jsonl.gz).",
            exists=True,
            dir_okay=False,
        ),
    ],
    principle: Annotated[
        str | None,
        typer.Option(help="Principle of these human preferences (HH files need one; pair files may carry their own)."),
    ] = None,
    format: Annotated[
        str, typer.Option(help="auto, pairs or hh (auto: files whose lines have a prompt field are pairs).")
    ] = "auto",
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Import human preferences as comparisons with labels of judge `human`; importing twice adds nothing."""
    from morlaif.jsonl import JsonlError
    from morlaif.store.importers import detect_format, read_hh, read_pair_jsonl

    s = _open(store)
    try:
        for f in files:
            kind = detect_format(f) if format == "auto" else format
            if kind == "hh":
                if principle is None:
                    raise typer.BadParameter(f"{f} is HH-RLHF: give --principle (e.g. harmlessness)")
                stats = s.import_pairs(read_hh(f, principle=principle))
            elif kind == "pairs":
                stats = s.import_pairs(read_pair_jsonl(f, principle=principle))
            else:
                raise typer.BadParameter(f"unknown format {kind!r}: auto, pairs or hh", param_hint="--format")
            typer.echo(
                f"{f}: {stats.records} records; new: {stats.prompts} prompts, {stats.responses} responses, "
                f"{stats.comparisons} comparisons, {stats.labels} human labels"
            )
    except JsonlError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    finally:
        s.close()


@app.command("import-hub")
def import_hub(
    dataset: Annotated[str, typer.Argument(help="Hub id of an HH-RLHF-format dataset, e.g. Anthropic/hh-rlhf.")],
    principle: Annotated[str, typer.Option(help="Principle of these human preferences, e.g. harmlessness.")],
    data_dir: Annotated[str | None, typer.Option(help="Subset folder, e.g. harmless-base.")] = None,
    split: Annotated[str, typer.Option(help="Split to read.")] = "test",
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Import HH-RLHF transcripts from the hub (needs network and `pip install 'morlaif[hub]'`)."""
    from morlaif.store.importers import ImportError_, read_hh_hub

    s = _open(store)
    try:
        stats = s.import_pairs(read_hh_hub(dataset, principle=principle, split=split, data_dir=data_dir))
    except ImportError_ as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    finally:
        s.close()
    typer.echo(f"{dataset}: {stats.records} records; new: {stats.comparisons} comparisons, {stats.labels} labels")


@app.command()
def enqueue(
    principles: Annotated[str, typer.Option(help="Comma-separated principles, e.g. helpfulness,factuality.")],
    judge: Annotated[str, typer.Option(help="Judge name (the model id of the endpoint, or `local`).")],
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many comparisons (oldest first).")] = None,
    source: Annotated[str | None, typer.Option(help="Only comparisons from this source.")] = None,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Add a job per (comparison, principle) for a judge; jobs that exist already are kept as they are."""
    names = [p.strip() for p in principles.split(",") if p.strip()]
    from morlaif.principles import PRINCIPLE_NAME_RE

    bad = [p for p in names if not PRINCIPLE_NAME_RE.match(p)]
    if not names or bad:
        raise typer.BadParameter(
            f"invalid principle name(s): {', '.join(bad) or '(none given)'}", param_hint="--principles"
        )
    s = _open(store)
    try:
        added = s.enqueue(names, judge, source=source, limit=limit)
    finally:
        s.close()
    typer.echo(f"enqueued {added} jobs for judge {judge!r} ({', '.join(names)})")


@app.command()
def run(
    judge_model: Annotated[
        str,
        typer.Option(
            "--judge",
            envvar="MORLAIF_JUDGE_MODEL",
            help="Judge model name at the endpoint (`local`: the in-process judge); jobs enqueued for this judge "
            "are the ones run. Env: MORLAIF_JUDGE_MODEL.",
        ),
    ],
    base_url: Annotated[
        str | None,
        typer.Option(
            envvar="MORLAIF_JUDGE_BASE_URL",
            help="OpenAI-compatible endpoint, e.g. http://vllm:8000/v1 (default: OpenAI). Env: MORLAIF_JUDGE_BASE_URL.",
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Jobs in flight at once.")] = 8,
    rpm: Annotated[float | None, typer.Option(min=0.001, help="Requests per minute (each job is 2).")] = None,
    tpm: Annotated[float | None, typer.Option(min=1, help="Tokens per minute (estimated from text).")] = None,
    lease: Annotated[
        float, typer.Option(min=1, help="Seconds a claimed job stays ours; a dead worker's jobs return after it.")
    ] = 300.0,
    timeout: Annotated[float, typer.Option(min=0.1, help="Per-request timeout, seconds.")] = 60.0,
    max_retries: Annotated[int, typer.Option(min=0, help="Retries per request on 429, 5xx and timeouts.")] = 4,
    max_attempts: Annotated[int, typer.Option(min=1, help="Attempts per job before it is marked failed.")] = 5,
    worker_id: Annotated[str | None, typer.Option(help="Lease owner name (default: host-pid).")] = None,
    usd_per_1k_prompt: Annotated[
        float, typer.Option(min=0, help="Price of 1000 prompt tokens, for the cost in labels and the summary.")
    ] = 0.0,
    usd_per_1k_completion: Annotated[float, typer.Option(min=0, help="Price of 1000 completion tokens.")] = 0.0,
    local_model: Annotated[
        str,
        typer.Option(help="Model of the `local` judge: smollm2 (packaged SmolLM2-135M-Instruct), a path or a hub id."),
    ] = "smollm2",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar (logs only).")] = False,
    heartbeat: Annotated[
        Path | None,
        typer.Option(help="File touched every few seconds while the worker is alive (for container health checks)."),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep waiting for new jobs (a service); stop with Ctrl-C or SIGTERM.")
    ] = False,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Label the queued jobs of one judge until none is left (or, with --follow, until stopped); prints a summary.

    The API key comes from MORLAIF_JUDGE_API_KEY (or OPENAI_API_KEY) and is never printed. Run as many
    workers as you like against one store: leases keep them from doing a job twice. Ctrl-C or SIGTERM
    stops claiming jobs, writes the labels in flight, then exits; a killed worker's jobs come back to the
    queue when their leases end.
    """
    import asyncio
    import logging
    import os
    import signal

    from tqdm import tqdm

    from feedback_worker.worker import run_worker
    from morlaif.judges.ratelimit import RateLimiter
    from morlaif.judges.remote import OpenAIJudge

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if quiet:
        from morlaif.runs import quiet_libraries

        quiet_libraries()  # the local judge's weights load without a bar in the service's log
    s = _open(store, max_attempts=max_attempts)
    key = os.environ.get(envvars.JUDGE_API_KEY) or os.environ.get(envvars.OPENAI_API_KEY)
    pending = sum(c["pending"] + c["running"] for c in s.status(judge_model).values())

    local = None
    if judge_model == "local":
        from morlaif.judges.local import TransformersJudge

        local = TransformersJudge(model=local_model, name="local")

    async def go():  # -> RunSummary
        judge = local or OpenAIJudge(
            model=judge_model,
            base_url=base_url,
            api_key=key,
            timeout=timeout,
            max_retries=max_retries,
            limiter=RateLimiter(requests_per_minute=rpm, tokens_per_minute=tpm),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            total = None if follow else pending
            with tqdm(total=total, unit="label", desc=f"labelling ({judge_model})", disable=quiet) as bar:
                return await run_worker(
                    s,
                    judge,
                    worker_id=worker_id,
                    concurrency=concurrency,
                    lease_s=lease,
                    cost_per_1k_tokens=(usd_per_1k_prompt, usd_per_1k_completion),
                    on_done=bar.update,
                    follow=follow,
                    stop=stop,
                    heartbeat=heartbeat.touch if heartbeat is not None else None,
                )
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await judge.aclose()

    from sqlalchemy.exc import DBAPIError

    from morlaif.store.db import display_url

    try:
        summary = asyncio.run(go())
    except DBAPIError as e:  # a full disk, a read-only store, a server gone for longer than the retries
        shown = display_url(store)
        msg = str(e.orig).strip().splitlines()[0] if e.orig is not None else type(e).__name__
        typer.echo(f"error: the label store {shown} failed: {msg}".replace(store, shown), err=True)
        typer.echo(
            "labels already written are kept; jobs in flight return to the queue when their lease ends", err=True
        )
        raise typer.Exit(1) from None
    finally:
        s.close()
    typer.echo(str(summary))


def _batch_client(base_url: str | None):  # -> (OpenAI client, key)
    import os

    import openai

    key = os.environ.get(envvars.JUDGE_API_KEY) or os.environ.get(envvars.OPENAI_API_KEY) or "none"
    return openai.OpenAI(base_url=base_url or None, api_key=key), key


@app.command("batch-submit")
def batch_submit(
    judge_model: Annotated[str, typer.Option("--judge", help="Judge model at the endpoint.")],
    base_url: Annotated[
        str | None,
        typer.Option(
            envvar="MORLAIF_JUDGE_BASE_URL", help="OpenAI-compatible endpoint with the Batch API (default: OpenAI)."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Jobs in this batch (two requests each).")] = 1000,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Send the judge's queued jobs as one OpenAI Batch API batch (cheaper, within 24 h); prints its id."""
    from feedback_worker.batch import submit_batch
    from morlaif.judges.remote import OpenAIJudge

    client, key = _batch_client(base_url)
    s = _open(store)
    try:
        bid = submit_batch(s, OpenAIJudge(model=judge_model, base_url=base_url, api_key=key), client, limit=limit)
    finally:
        s.close()
        client.close()
    typer.echo(
        f"submitted batch {bid}; ingest it with: morlaif feedback batch-ingest {bid} --judge {judge_model}"
        if bid
        else f"no queued jobs for judge {judge_model!r}"
    )


@app.command("batch-ingest")
def batch_ingest(
    batch_id: Annotated[str, typer.Argument(help="The id `batch-submit` printed.")],
    judge_model: Annotated[str, typer.Option("--judge", help="Judge model the batch was submitted for.")],
    base_url: Annotated[str | None, typer.Option(envvar="MORLAIF_JUDGE_BASE_URL", help="The same endpoint.")] = None,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Write the labels of a finished batch (safe to repeat); says so when it is still running."""
    from feedback_worker.batch import ingest_batch

    client, _ = _batch_client(base_url)
    s = _open(store)
    try:
        typer.echo(str(ingest_batch(s, client, batch_id, judge_model=judge_model)))
    finally:
        s.close()
        client.close()


@app.command()
def status(
    judge: Annotated[str | None, typer.Option(help="Only this judge's jobs.")] = None,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Per principle: jobs pending, running, done and failed."""
    s = _open(store)
    try:
        rows = s.status(judge)
    finally:
        s.close()
    typer.echo(f"{'principle':<20} {'pending':>8} {'running':>8} {'done':>8} {'failed':>8}")
    for p, c in sorted(rows.items()):
        typer.echo(f"{p:<20} {c['pending']:>8} {c['running']:>8} {c['done']:>8} {c['failed']:>8}")
    if not rows:
        typer.echo("(no jobs: `morlaif feedback enqueue` adds them)")


@app.command()
def report(
    judge: Annotated[str, typer.Option(help="Judge whose labels to report on.")],
    out: Annotated[
        Path,
        typer.Option(
            help="PNG of the principle-by-principle agreement matrix (a .json with the numbers is written beside it)."
        ),
    ] = Path("feedback_report.png"),
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Per principle, how often the judge agrees with human labels; and how principles agree with each other."""
    from feedback_worker.report import build_report, write_heatmap

    s = _open(store)
    try:
        rep = build_report(s, judge)
    finally:
        s.close()
    if not rep.principles:
        typer.echo(f"error: no labels of judge {judge!r} in the store", err=True)
        raise typer.Exit(1)
    typer.echo(rep.table())
    write_heatmap(rep, out)
    out.with_suffix(".json").write_text(rep.to_json())
    typer.echo(f"wrote {out} and {out.with_suffix('.json')}")


@app.command()
def export(
    principle: Annotated[str, typer.Option(help="Principle to export.")],
    out: Annotated[Path, typer.Option(help="Pair JSONL to write (replaced atomically).")],
    judge: Annotated[str | None, typer.Option(help="Only this judge's labels (default: all, human included).")] = None,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Write a principle's labels as pair JSONL for PM training, with the soft label `p` of the chosen side."""
    s = _open(store)
    try:
        n = s.export(principle, out, judge=judge)
    finally:
        s.close()
    typer.echo(f"wrote {n} pairs to {out}")
