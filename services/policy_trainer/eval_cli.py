"""`morlaif eval`: evaluate trained policies (win rate against a baseline, judged per principle)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from morlaif import envvars
from policy_trainer.cli import _fail

app = typer.Typer(
    name="eval",
    help="Evaluate policies: MORLAIF's win rate against a baseline, per principle and overall.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command("winrate")
def winrate_cmd(
    policy: Annotated[str, typer.Argument(help="A `morlaif ppo train` run folder, its policy/, a model or hub id.")],
    baseline: Annotated[
        str | None, typer.Option(help="The policy to beat (default: the base model the run started from).")
    ] = None,
    principles: Annotated[
        str, typer.Option(help="Comma-separated principles the judge is asked about, besides 'overall'.")
    ] = "helpfulness,harmlessness",
    judge: Annotated[
        str, typer.Option(help="Judge model at the endpoint, or `local` (an in-process causal LM, see --local-model).")
    ] = "local",
    judge_base_url: Annotated[
        str | None,
        typer.Option(envvar="MORLAIF_JUDGE_BASE_URL", help="OpenAI-compatible endpoint. Env: MORLAIF_JUDGE_BASE_URL."),
    ] = None,
    local_model: Annotated[
        str, typer.Option(help="Model of the `local` judge: smollm2 (packaged SmolLM2-135M-Instruct), a path or id.")
    ] = "smollm2",
    prompts: Annotated[
        str | None, typer.Option(help="Prompt file (default: the run's data.prompts, held-out side of its split).")
    ] = None,
    eval_fraction: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Held-out share (default: the run's).")
    ] = None,
    salt: Annotated[str | None, typer.Option(help="Split salt (default: the run's data.split_salt).")] = None,
    num_prompts: Annotated[int, typer.Option(min=1, help="Held-out prompts to evaluate on.")] = 64,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Most tokens per response.")] = 48,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature; 0: greedy.")] = 0.7,
    seed: Annotated[int, typer.Option(help="Seed of the prompt sample and of sampling.")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per generation batch.")] = 8,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Judge comparisons in flight.")] = 8,
    timeout: Annotated[float, typer.Option(min=0.1, help="Judge request timeout, seconds.")] = 60.0,
    max_retries: Annotated[int, typer.Option(min=0, help="Judge retries on 429, 5xx and timeouts.")] = 4,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    out: Annotated[
        Path | None, typer.Option(help="Result JSON (default: RUN/winrate.json for a run, else ./winrate.json).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Sample POLICY and the baseline on held-out prompts; a judge says which is better, both orders.

    For a run folder the prompts are the held-out side of the run's own split, so the policy never trained
    on them. Prints per principle the wins, ties, losses, the win rate (ties count half) with its 95%
    Wilson interval and the judge's mean p(policy better); writes them as JSON, and every prompt with both
    responses and p to a .jsonl beside it. The judge key comes from MORLAIF_JUDGE_API_KEY (or
    OPENAI_API_KEY). Example:

        morlaif eval winrate runs/ppo-demo --judge gpt-4o-mini --principles helpfulness,harmlessness
    """
    import os

    from morlaif.errors import MorlaifError
    from policy_trainer.generate import SamplingConfig
    from policy_trainer.winrate import (
        baseline_of,
        format_table,
        held_out,
        judge_phrases,
        prompt_source,
        run_folder,
        run_winrate,
    )

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        phrases = judge_phrases([p.strip() for p in principles.split(",") if p.strip()])
        baseline = baseline or baseline_of(policy)
        src = prompt_source(policy, prompts=prompts, eval_fraction=eval_fraction, salt=salt)
        chosen = held_out(src, num_prompts, seed)
    except (MorlaifError, OSError) as e:
        raise _fail(str(e)) from None
    if judge == "local":
        from morlaif.judges.local import TransformersJudge
        from policy_trainer.train import resolve_device

        the_judge = TransformersJudge(model=local_model, name="local", device=str(resolve_device(device)))
    else:
        from morlaif.judges.remote import OpenAIJudge

        key = os.environ.get(envvars.JUDGE_API_KEY) or os.environ.get(envvars.OPENAI_API_KEY)
        the_judge = OpenAIJudge(
            model=judge, base_url=judge_base_url, api_key=key, timeout=timeout, max_retries=max_retries
        )
    sampling = SamplingConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        batch_size=batch_size,
        seed=seed,
        chat_template=src.chat_template,
    )
    try:
        results, records, failures = run_winrate(
            policy,
            baseline,
            chosen,
            the_judge,
            phrases,
            sampling,
            device=device,
            concurrency=concurrency,
            progress=not quiet,
        )
    except (MorlaifError, OSError, ValueError) as e:
        raise _fail(str(e)) from None
    run = run_folder(policy)
    out = out or ((run / "winrate.json") if run is not None else Path("winrate.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "policy": policy,
        "baseline": baseline,
        "judge": judge if judge != "local" else f"local:{local_model}",
        "prompts": src.prompts,
        "eval_fraction": src.eval_fraction,
        "salt": src.salt,
        "n_prompts": len(chosen),
        "sampling": sampling.__dict__,
        "judge_failures": failures,
        "results": [r.to_dict() for r in results],
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    samples = out.with_suffix(".jsonl")
    samples.write_text("".join(json.dumps(r) + "\n" for r in records))
    typer.echo(format_table(results, policy, baseline))
    if failures:
        typer.echo(f"judge failures (left out): {failures}", err=True)
    typer.echo(f"wrote {out} and {samples}", err=True)


@app.command("conditioning")
def conditioning_cmd(
    policy: Annotated[str, typer.Argument(help="The reward-conditioned model: a `morlaif sft` folder or its policy/.")],
    scaling: Annotated[
        Path, typer.Option(help="The scaling its training records were written with (<records>.scaling.json).")
    ],
    prompts: Annotated[str, typer.Option(help="Held-out prompts (HH transcripts, {prompt} or {messages} JSONL).")],
    url: Annotated[str, typer.Option(envvar="MORLAIF_URL", help="PM server that scores the responses.")] = (
        "http://127.0.0.1:8000"
    ),
    num_prompts: Annotated[int, typer.Option(min=3, help="Prompts to evaluate on (a seeded sample).")] = 64,
    spread: Annotated[float, typer.Option(min=0.1, help="Random targets are uniform in [-spread, spread].")] = 2.0,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Most tokens per response.")] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature; 0: greedy.")] = 0.7,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per generation batch.")] = 8,
    chat_template: Annotated[bool, typer.Option(help="Prompts through the chat template (as `morlaif sft`).")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the prompt sample, the targets and sampling.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    out: Annotated[Path, typer.Option(help="Result JSON; the scatter plot and samples go beside it.")] = Path(
        "conditioning.json"
    ),
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """How well a reward-conditioned model gives the scores it is asked for.

    Each held-out prompt is asked for random target scores (scaled as in training) and, separately, for the
    maximum on every principle; the PM server scores what comes back. Prints per principle the correlation
    and slope between requested and achieved scaled scores, the mean achieved under random targets and
    under "maximum on all"; writes the JSON, a scatter plot (.png) and every sample (.jsonl). Example:

        morlaif eval conditioning runs/sft-cond --scaling cond.scaling.json --prompts held-out.jsonl
    """
    import os
    import random

    from morlaif.client import MorlaifClient
    from morlaif.errors import MorlaifError
    from morlaif.runs import progress
    from policy_trainer.conditioning import ConditionError, Scaling, evaluate_conditioning, plot_conditioning
    from policy_trainer.data import read_prompts
    from policy_trainer.generate import SamplingConfig, generate_responses
    from policy_trainer.train import load_trained_policy

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        sc = Scaling.load(scaling)
        pool = read_prompts(prompts)
    except (ConditionError, MorlaifError) as e:
        raise _fail(str(e)) from None
    chosen = random.Random(seed).sample(pool, num_prompts) if len(pool) > num_prompts else pool
    try:
        model, tokenizer = load_trained_policy(policy, device=device)
    except OSError as e:
        raise _fail(f"cannot load {policy!r}: {e}") from None
    cfg = SamplingConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        batch_size=batch_size,
        seed=seed,
        chat_template=chat_template,
    )

    def generate(texts: list[str]) -> list[str]:
        bar = progress(len(texts), 0, "sampling", not quiet, unit="prompt")
        try:
            return generate_responses(model, tokenizer, texts, cfg, on_batch=bar.update)
        finally:
            bar.close()

    with MorlaifClient(url, api_key=os.environ.get(envvars.API_KEY)) as client:

        def score(ps: list[str], rs: list[str]) -> list[dict[str, float]]:
            res = []
            for i in range(0, len(ps), 64):
                got = client.score(ps[i : i + 64], rs[i : i + 64], principles=sc.principles)
                res += [r.scores for r in got.results]
            return res

        try:
            report = evaluate_conditioning(chosen, sc, generate, score, seed=seed, spread=spread)
        except MorlaifError as e:
            raise _fail(f"the PM server at {url} failed: {e}", 1) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    body = {k: v for k, v in report.__dict__.items() if k != "records"}
    body.update(policy=policy, prompts=prompts, scaling=str(scaling), sampling=cfg.__dict__, spread=spread)
    out.write_text(json.dumps(body, indent=2) + "\n")
    samples = out.with_suffix(".jsonl")
    samples.write_text("".join(json.dumps(r) + "\n" for r in report.records))
    png = out.with_suffix(".png")
    plot_conditioning(report, png)
    typer.echo(report.table())
    typer.echo(f"wrote {out}, {png} and {samples}", err=True)
