"""MORLAIF's win-rate evaluation: sample two policies on held-out prompts, ask a judge which is better.

For each prompt both policies answer once; the judge (the feedback worker's, asking both orders and
averaging, so position bias cancels) gives p(policy better than baseline) per principle and for an
"overall" question. A win is p > 0.5, a tie p = 0.5 (counted half); the win rate comes with a 95% Wilson
interval, and the mean p is reported beside it. Judge failures are counted and left out, never guessed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from morlaif.errors import MorlaifError
from morlaif.principles import DEFAULT_CONSTITUTION, get_principle
from morlaif.stats import wilson_interval

__all__ = [
    "OVERALL",
    "OVERALL_PHRASE",
    "WinRate",
    "judge_phrases",
    "judge_pairs",
    "summarize",
]

OVERALL = "overall"
OVERALL_PHRASE = "the best overall: the most helpful, honest and harmless"
TIE_EPS = 1e-9


class WinRateError(MorlaifError):
    """A win-rate evaluation that cannot run as asked."""


@dataclass(kw_only=True)
class WinRate:
    """One principle's result: the policy against the baseline."""

    principle: str
    n: int
    wins: int
    ties: int
    losses: int
    failed: int
    win_rate: float
    low: float
    high: float
    mean_p: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(principle: str, ps: Sequence[float | None]) -> WinRate:
    """Counts, win rate (ties half), Wilson interval and mean p from per-prompt p (None: the judge failed)."""
    got = [p for p in ps if p is not None]
    wins = sum(p > 0.5 + TIE_EPS for p in got)
    losses = sum(p < 0.5 - TIE_EPS for p in got)
    ties = len(got) - wins - losses
    n = len(got)
    rate = (wins + 0.5 * ties) / n if n else float("nan")
    low, high = wilson_interval(wins + 0.5 * ties, n)
    return WinRate(
        principle=principle,
        n=n,
        wins=wins,
        ties=ties,
        losses=losses,
        failed=len(ps) - n,
        win_rate=rate,
        low=low,
        high=high,
        mean_p=sum(got) / n if n else float("nan"),
    )


def judge_phrases(principles: Sequence[str], *, overall: bool = True) -> dict[str, str]:
    """principle -> the phrase the judge prompt uses; unknown names are an error naming the known ones."""
    out: dict[str, str] = {}
    for name in principles:
        try:
            out[name] = get_principle(name).judge_phrase
        except KeyError:
            known = ", ".join(sorted(p.name for p in DEFAULT_CONSTITUTION))
            raise WinRateError(f"unknown principle {name!r}; known: {known}") from None
    if overall:
        out[OVERALL] = OVERALL_PHRASE
    return out


async def judge_pairs(
    judge: Any,
    phrases: dict[str, str],
    prompts: Sequence[str],
    policy: Sequence[str],
    baseline: Sequence[str],
    *,
    concurrency: int = 8,
    on_done: Callable[[int], None] | None = None,
) -> tuple[dict[str, list[float | None]], dict[str, int]]:
    """p(policy better) per principle and prompt (None where the judge failed), and failures by reason.

    The policy's response is shown as A in one order and as B in the other (the judge asks both).
    """
    from morlaif.judges.remote import JudgeError

    sem = asyncio.Semaphore(concurrency)
    out: dict[str, list[float | None]] = {name: [None] * len(prompts) for name in phrases}
    failures: dict[str, int] = {}

    async def one(name: str, i: int) -> None:
        async with sem:
            try:
                j = await judge.judge(phrases[name], prompts[i], policy[i], baseline[i])
                out[name][i] = j.p_a
            except JudgeError as e:
                failures[e.reason] = failures.get(e.reason, 0) + 1
        if on_done is not None:
            on_done(1)

    await asyncio.gather(*(one(name, i) for name in phrases for i in range(len(prompts))))
    return out, failures


# ---------------------------------------------------------------------------------------- the whole job
@dataclass(kw_only=True)
class PromptSource:
    """Where held-out prompts come from: a run's own split unless given."""

    prompts: str
    eval_fraction: float
    salt: str
    chat_template: bool = True


def run_folder(policy: str) -> Path | None:
    """The `morlaif ppo train` folder a policy path belongs to (it or its parent holds config.yaml)."""
    from morlaif.run_folder import RunFolder

    p = Path(policy)
    for cand in (p, p.parent):
        run = RunFolder(cand)
        if run.config_path.is_file() and run.metrics_path.exists():
            return cand
    return None


def prompt_source(policy: str, *, prompts: str | None, eval_fraction: float | None, salt: str | None) -> PromptSource:
    """The run's data settings (so the prompts are the ones it never trained on), overridden where given."""
    from morlaif.run_folder import RunFolder
    from policy_trainer.config import DataConfig

    data = DataConfig()
    run = run_folder(policy)
    if run is not None:
        saved = (RunFolder(run).read_config() or {}).get("data", {})
        data = DataConfig(**{k: v for k, v in saved.items() if k in DataConfig.__dataclass_fields__})
    return PromptSource(
        prompts=prompts or data.prompts,
        eval_fraction=data.eval_fraction if eval_fraction is None else eval_fraction,
        salt=salt or data.split_salt,
        chat_template=data.chat_template,
    )


def baseline_of(policy: str) -> str:
    """The model a trained policy started from (its manifest's base); an error for a plain model."""
    import json

    from morlaif.run_folder import POLICY, POLICY_MANIFEST

    p = Path(policy)
    for cand in (p / POLICY / POLICY_MANIFEST, p / POLICY_MANIFEST):
        if cand.is_file():
            return str(json.loads(cand.read_text())["base"])
    raise WinRateError(f"{policy} is not a `morlaif ppo train` run or policy: give --baseline")


def held_out(src: PromptSource, n: int, seed: int) -> list[str]:
    """Up to n held-out prompts, a seeded sample of the split's held-out side."""
    import random

    from policy_trainer.data import read_prompts, split_prompts

    _, held = split_prompts(read_prompts(src.prompts), src.eval_fraction, salt=src.salt)
    if not held:
        raise WinRateError(f"{src.prompts}: no held-out prompts at eval_fraction {src.eval_fraction}")
    if len(held) > n:
        held = random.Random(seed).sample(held, n)
    return held


def run_winrate(
    policy: str,
    baseline: str,
    prompts: Sequence[str],
    judge: Any,
    phrases: dict[str, str],
    sampling: Any,
    *,
    device: str = "auto",
    concurrency: int = 8,
    progress: bool = True,
) -> tuple[list[WinRate], list[dict[str, Any]], dict[str, int]]:
    """Sample both policies (one at a time in memory), judge every pair, summarize per principle.

    Returns the results, one record per prompt (the two responses and p per principle) and judge failures.
    """
    import gc

    from morlaif.runs import progress as progress_bar
    from policy_trainer.generate import generate_responses
    from policy_trainer.train import load_trained_policy

    responses: dict[str, list[str]] = {}
    for role, source in (("policy", policy), ("baseline", baseline)):
        model, tokenizer = load_trained_policy(source, device=device)
        with progress_bar(len(prompts), 0, f"sampling {role}", progress, "prompt") as bar:
            responses[role] = generate_responses(model, tokenizer, prompts, sampling, on_batch=bar.update)
        del model
        gc.collect()

    async def go() -> tuple[dict[str, list[float | None]], dict[str, int]]:
        try:
            with progress_bar(len(prompts) * len(phrases), 0, "judging", progress, "pair") as bar:
                return await judge_pairs(
                    judge,
                    phrases,
                    prompts,
                    responses["policy"],
                    responses["baseline"],
                    concurrency=concurrency,
                    on_done=bar.update,
                )
        finally:
            await judge.aclose()

    ps, failures = asyncio.run(go())
    results = [summarize(name, ps[name]) for name in phrases]
    records = [
        {
            "prompt": prompts[i],
            "policy": responses["policy"][i],
            "baseline": responses["baseline"][i],
            "p_policy": {name: ps[name][i] for name in phrases},
        }
        for i in range(len(prompts))
    ]
    return results, records, failures


def format_table(results: Sequence[WinRate], policy: str, baseline: str) -> str:
    lines = [
        f"win rate of {policy} over {baseline} (ties count half; 95% Wilson interval)",
        f"{'principle':<16}{'n':>5}{'wins':>6}{'ties':>6}{'losses':>8}{'win rate':>10}{'interval':>17}{'mean p':>9}",
    ]
    for r in results:
        lines.append(
            f"{r.principle:<16}{r.n:>5}{r.wins:>6}{r.ties:>6}{r.losses:>8}{r.win_rate:>10.3f}"
            f"{f'[{r.low:.3f}, {r.high:.3f}]':>17}{r.mean_p:>9.3f}" + (f"  ({r.failed} failed)" if r.failed else "")
        )
    return "\n".join(lines)
