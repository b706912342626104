"""Reward-conditioned training (reward in the prompt): the alternative to PPO from the MORLAIF study.

Score existing dialogues with the PMs, write each response's per-principle scores into its prompt as text,
fine-tune on that (`morlaif sft`), and at inference ask for the scores you want. What the study found to
work best, and what this does: scores standard-scaled over the training set and placed at the end of the
prompt, i.e. at the end of the user's last turn, just before ``Assistant:``::

    \\n\\nHuman: How do I boil an egg?\\n\\n<scores helpfulness=1.2 harmlessness=-0.3>\\n\\nAssistant:

* `Scaling`: per-principle mean and standard deviation of the training set's scores (saved beside the data:
  inference must scale targets the same way).
* `conditioned_prompt` / `parse_conditioned`: put the tag in, take it out (round trip, to `decimals`).
* `write_conditioning`: the scored records of `morlaif score` -> ``{"prompt", "completion", "targets"}``
  records for `morlaif sft`, and the scaling.
* `evaluate_conditioning`: sample held-out prompts with random targets, score what comes back, and report per
  principle the correlation between requested and achieved (scaled) scores, and what asking for the
  maximum on every principle at once achieves.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from morlaif.jsonl import JsonlError, iter_objects
from morlaif.protocol import ScoreItem

__all__ = [
    "ConditionError",
    "ConditioningReport",
    "Scaling",
    "conditioned_prompt",
    "evaluate_conditioning",
    "parse_conditioned",
    "pearson",
    "write_conditioning",
]

_TAG = re.compile(r"\n\n<scores((?: [A-Za-z0-9_.-]+=-?\d+(?:\.\d+)?)+)>(?=\n\nAssistant:$|$)")
_ASSISTANT = "\n\nAssistant:"


class ConditionError(JsonlError):
    """Scored records that cannot be conditioned on; the message names the file (and line)."""


@dataclass
class Scaling:
    """Per-principle mean and standard deviation of the training set's scores."""

    mean: dict[str, float]
    std: dict[str, float]
    decimals: int = 1
    #: the largest scaled score each principle reached in the training set ("ask for the maximum")
    max_z: dict[str, float] = field(default_factory=dict)

    @property
    def principles(self) -> list[str]:
        return list(self.mean)

    def z(self, scores: dict[str, float]) -> dict[str, float]:
        return {p: (scores[p] - self.mean[p]) / self.std[p] for p in self.mean}

    @classmethod
    def fit(cls, rows: Sequence[dict[str, float]], principles: Sequence[str], decimals: int = 1) -> Scaling:
        mean, std = {}, {}
        for p in principles:
            xs = [r[p] for r in rows]
            m = sum(xs) / len(xs)
            sd = math.sqrt(sum((x - m) ** 2 for x in xs) / max(1, len(xs) - 1))
            mean[p], std[p] = m, sd if sd > 1e-12 else 1.0
        s = cls(mean=mean, std=std, decimals=decimals)
        s.max_z = {p: max(s.z(r)[p] for r in rows) for p in principles}
        return s

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Scaling:
        try:
            d = json.loads(path.read_text())
            s = cls(mean=dict(d["mean"]), std=dict(d["std"]), decimals=int(d.get("decimals", 1)))
            s.max_z = dict(d.get("max_z", {}))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConditionError(f"{path}: not a scaling file ({type(e).__name__}: {e})") from None
        if set(s.mean) != set(s.std) or any(v <= 0 for v in s.std.values()):
            raise ConditionError(f"{path}: mean and std must name the same principles, std > 0")
        return s


def _tag(targets: dict[str, float], decimals: int) -> str:
    return "\n\n<scores" + "".join(f" {p}={round(v, decimals):.{decimals}f}" for p, v in targets.items()) + ">"


def conditioned_prompt(prompt: str, targets: dict[str, float], *, decimals: int = 1) -> str:
    """`prompt` with the target scores written in at its end (before the final ``Assistant:`` of a transcript)."""
    tag = _tag(targets, decimals)
    if prompt.endswith(_ASSISTANT):
        return prompt[: -len(_ASSISTANT)] + tag + _ASSISTANT
    return prompt + tag


def parse_conditioned(prompt: str) -> tuple[str, dict[str, float]]:
    """(the prompt without its tag, the targets it asks for); ({}: no tag)."""
    m = _TAG.search(prompt)
    if m is None:
        return prompt, {}
    targets = {k: float(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    return prompt[: m.start()] + prompt[m.end() :], targets


def write_conditioning(
    scored: Path, out: Path, *, principles: Sequence[str] | None = None, decimals: int = 1
) -> tuple[int, Scaling]:
    """Records of `morlaif score` (prompt, response, scores) -> conditioning records and their scaling
    (written to ``out`` and ``<out>.scaling.json``). Returns (records written, scaling)."""
    rows: list[tuple[str, str, dict[str, float]]] = []
    for n, obj in iter_objects(scored):
        scores = obj.get("scores")
        prompt, response = obj.get("prompt"), obj.get("response")
        if prompt is None and "messages" in obj:  # a chat record: the turns before the last, and the last
            try:
                prompt, response = ScoreItem.model_validate({"messages": obj["messages"]}).as_pair()
            except ValueError as e:
                raise ConditionError(f"{scored}:{n}: bad messages ({e})") from None
        if not isinstance(scores, dict) or not isinstance(prompt, str) or not isinstance(response, str):
            raise ConditionError(f"{scored}:{n}: expected a scored record with 'prompt', 'response' and 'scores'")
        rows.append((prompt, response, scores))
    if not rows:
        raise ConditionError(f"{scored}: no scored records")
    names = list(principles) if principles else list(rows[0][2])
    for i, (_, _, sc) in enumerate(rows):
        missing = [p for p in names if not isinstance(sc.get(p), int | float)]
        if missing:
            raise ConditionError(f"{scored}:{i + 1}: no score for {', '.join(missing)}")
    scaling = Scaling.fit([sc for _, _, sc in rows], names, decimals)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w") as f:
        for prompt, response, sc in rows:
            z = scaling.z({p: sc[p] for p in names})
            rec = {
                "prompt": conditioned_prompt(prompt, z, decimals=decimals),
                "completion": response,
                "targets": {p: round(v, decimals) for p, v in z.items()},
            }
            f.write(json.dumps(rec) + "\n")
    tmp.replace(out)
    scaling.save(scaling_path(out))
    return len(rows), scaling


def scaling_path(records: Path) -> Path:
    return records.with_name(records.name.removesuffix(".jsonl") + ".scaling.json")


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


@dataclass
class ConditioningReport:
    principles: list[str]
    n_prompts: int
    correlation: dict[str, float | None]
    slope: dict[str, float | None]
    achieved_random_mean: dict[str, float]
    max_requested: dict[str, float]
    achieved_max_mean: dict[str, float]
    records: list[dict[str, Any]] = field(repr=False)

    def table(self) -> str:
        lines = [
            f"{'principle':<16} {'r(req, got)':>11} {'slope':>7} {'got|random':>11} {'got|max':>8} {'max asked':>9}"
        ]
        for p in self.principles:
            r, s = self.correlation[p], self.slope[p]
            lines.append(
                f"{p:<16} {('-' if r is None else f'{r:.3f}'):>11} {('-' if s is None else f'{s:.3f}'):>7} "
                f"{self.achieved_random_mean[p]:>11.3f} {self.achieved_max_mean[p]:>8.3f} {self.max_requested[p]:>9.1f}"
            )
        return "\n".join(lines)


def evaluate_conditioning(
    prompts: Sequence[str],
    scaling: Scaling,
    generate: Any,
    score: Any,
    *,
    seed: int = 0,
    spread: float = 2.0,
) -> ConditioningReport:
    """For every prompt: a response to random targets (uniform in [-spread, spread] per principle) and one to
    the maximum on every principle (`scaling.max_z`, else `spread`). `generate(prompts) -> responses`;
    `score(prompts, responses) -> [{principle: score}]` (the PM server's scores, scaled here)."""
    rng = random.Random(seed)
    names = scaling.principles
    d = scaling.decimals
    randoms = [{p: round(rng.uniform(-spread, spread), d) for p in names} for _ in prompts]
    top = {p: round(scaling.max_z.get(p, spread), d) for p in names}
    asked = [conditioned_prompt(q, t, decimals=d) for q, t in zip(prompts, randoms, strict=True)]
    asked += [conditioned_prompt(q, top, decimals=d) for q in prompts]
    responses = generate(asked)
    scored = score(list(prompts) * 2, responses)
    got = [scaling.z({p: s[p] for p in names}) for s in scored]
    n = len(prompts)
    records = [
        {
            "prompt": prompts[i % n],
            "targets": (randoms[i] if i < n else top),
            "response": responses[i],
            "achieved": got[i],
        }
        for i in range(2 * n)
    ]
    corr, slope = {}, {}
    for p in names:
        xs = [randoms[i][p] for i in range(n)]
        ys = [got[i][p] for i in range(n)]
        corr[p] = pearson(xs, ys)
        mx, my = sum(xs) / n, sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        slope[p] = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx > 0 else None
    return ConditioningReport(
        principles=names,
        n_prompts=n,
        correlation=corr,
        slope=slope,
        achieved_random_mean={p: sum(got[i][p] for i in range(n)) / n for p in names},
        max_requested=top,
        achieved_max_mean={p: sum(got[n + i][p] for i in range(n)) / n for p in names},
        records=records,
    )


def plot_conditioning(report: ConditioningReport, path: Path) -> None:
    """Requested against achieved scaled score, one panel per principle (the study's scatter plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report.principles
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False)
    n = report.n_prompts
    for ax, p in zip(axes[0], names, strict=True):
        xs = [r["targets"][p] for r in report.records[:n]]
        ys = [r["achieved"][p] for r in report.records[:n]]
        ax.scatter(xs, ys, s=10, alpha=0.7)
        mx = [r["targets"][p] for r in report.records[n:]]
        my = [r["achieved"][p] for r in report.records[n:]]
        ax.scatter(mx, my, s=10, alpha=0.5, color="tab:red", label="max on all")
        lo, hi = min(xs + ys + mx + my), max(xs + ys + mx + my)
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
        r = report.correlation[p]
        ax.set_title(f"{p}\nr = {'-' if r is None else f'{r:.2f}'}", fontsize=9)
        ax.set_xlabel("requested (scaled)")
    axes[0][0].set_ylabel("achieved (scaled, PM)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
