"""PM evaluation: per-principle accuracy with baselines, and multi-objective accuracy on human preferences.

* Per principle: how often a package prefers the labelled side of its own principle's pairs, with a 95%
  Wilson interval, next to three baselines: the longer response wins, the base's untrained head, a coin.
* Multi-objective (MORLAIF's PM_regression): per-principle score differences (chosen - rejected) on human
  preference pairs are split by prompt into a fitting part and a test part; non-negative linear weights are
  fitted by logistic regression on the fitting part, and every scalarizer of `morlaif.scalarize` is scored
  with those weights on the test part, beside a single PM trained on all principles' data pooled.

Weights are non-negative because every monotone scalarizer needs them so: a principle whose PM points
the wrong way on human preferences gets weight 0 rather than a reward that falls as it improves.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from morlaif.errors import ScalarizeError
from morlaif.protocol import ScalarizerSpec, length_feature
from morlaif.scalarize import SCALARIZERS, scalarize
from morlaif.stats import wilson_interval
from pm_server.model.base import BaseModel
from pm_server.model.engine import BASE_ADAPTER, Row, ScoringEngine
from pm_server.model.package import CheckedPackage, check_package, resolve_package_dir
from pm_server.model.template import InputTemplate, TemplateEncoder
from pm_server.training.pairs import Pair, split_by_prompt

__all__ = [
    "Accuracy",
    "PackageScorer",
    "MultiObjectiveResult",
    "accuracy",
    "agreement_matrix",
    "FIT_OBJECTIVES",
    "fit_weights",
    "multi_objective",
    "reward_per_source",
    "write_scalarizer_file",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Accuracy:
    value: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, margins: torch.Tensor) -> Accuracy:
        """From score margins (labelled side minus other side): > 0 right, 0 half, < 0 wrong."""
        n = int(margins.numel())
        acc = float(((margins > 0).float() + 0.5 * (margins == 0).float()).mean()) if n else float("nan")
        lo, hi = wilson_interval(acc * n, n) if n else (float("nan"), float("nan"))
        return cls(value=acc, low=lo, high=hi, n=n)

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": round(self.value, 4), "ci95": [round(self.low, 4), round(self.high, 4)], "n": self.n}


def accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> Accuracy:
    return Accuracy.of(chosen - rejected)


class PackageScorer:
    """Loads packages onto one base in-process and scores (prompt, response) lists, batched by length."""

    def __init__(self, base: BaseModel, root: Path, *, max_batch_tokens: int = 8192, max_rows: int = 64) -> None:
        self.base = base
        self.root = root
        self.engine = ScoringEngine(base)
        self.packages: dict[str, CheckedPackage] = {}
        self._ids: dict[str, str] = {}
        self._encoders: dict[InputTemplate, TemplateEncoder] = {}
        self.max_batch_tokens = max_batch_tokens
        self.max_rows = max_rows

    def load(self, name: str, version: str | None = None) -> CheckedPackage:
        pkg_dir = resolve_package_dir(self.root, name, version=version)
        pkg = check_package(self.root, pkg_dir, expect_name=name, base_config_hash=self.base.config_hash)
        internal = f"pkg{len(self._ids)}"  # PEFT mangles adapter names like "bias": keep principle names out
        self.engine.load_adapter(pkg.path, internal)
        self.packages[name], self._ids[name] = pkg, internal
        return pkg

    def _encoder(self, template: InputTemplate) -> TemplateEncoder:
        if template not in self._encoders:
            self._encoders[template] = TemplateEncoder(self.base.tokenizer, template)
        return self._encoders[template]

    def raw(
        self,
        name: str | None,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        template: InputTemplate | None = None,
    ) -> torch.Tensor:
        """Raw scores of package `name` (None: the base's untrained head, with `template`)."""
        if name is None:
            adapter, tpl = BASE_ADAPTER, template or self.base.default_template
        else:
            adapter, tpl = self._ids[name], self.packages[name].manifest.template
        enc = self._encoder(tpl)
        rows = [enc.encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out = torch.empty(len(rows))
        i = 0
        while i < len(order):
            j = i + 1
            while (
                j < len(order) and j - i < self.max_rows and len(rows[order[j]]) * (j - i + 1) <= self.max_batch_tokens
            ):
                j += 1
            idx = order[i:j]
            scores = self.engine.score(
                [Row(rows[k].input_ids, rows[k].token_type_ids, adapter, rows[k].prefix_tokens) for k in idx]
            )
            out[idx] = torch.tensor(scores)
            i = j
        return out

    def normalized(self, name: str, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Scores calibrated by the package's calibration (length term, then standardised), as the server
        returns them by default."""
        cal = self.packages[name].manifest.calibration
        length = torch.tensor([length_feature(r) for r in responses])
        return (self.raw(name, prompts, responses) - cal.length_coef * length - cal.mean) / cal.std

    def pair_scores(self, name: str | None, pairs: Sequence[Pair], *, normalized: bool = True) -> torch.Tensor:
        """(N, 2) scores of chosen and rejected."""
        prompts = [p.prompt for p in pairs] * 2
        responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        if name is not None and normalized:
            s = self.normalized(name, prompts, responses)
        else:
            template = next(iter(self.packages.values())).manifest.template if self.packages else None
            s = self.raw(name, prompts, responses, template=template)
        return torch.stack([s[: len(pairs)], s[len(pairs) :]], dim=1)


def labelled_margins(scores: torch.Tensor, pairs: Sequence[Pair]) -> torch.Tensor:
    """Margin of the labelled side: chosen - rejected where p >= 0.5, else the reverse."""
    d = scores[:, 0] - scores[:, 1]
    p = torch.tensor([x.p for x in pairs])
    return torch.where(p >= 0.5, d, -d)


def length_margins(pairs: Sequence[Pair]) -> torch.Tensor:
    """The "longer response wins" baseline, in characters."""
    d = torch.tensor([float(len(x.chosen) - len(x.rejected)) for x in pairs])
    p = torch.tensor([x.p for x in pairs])
    return torch.where(p >= 0.5, d, -d)


def coin_flip(n: int, seed: int = 0) -> Accuracy:
    """A fair coin on n pairs: what chance alone scores, with its own spread."""
    g = torch.Generator().manual_seed(seed)
    return Accuracy.of(torch.randint(0, 2, (n,), generator=g).float() * 2 - 1)


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denom = float(x.norm() * y.norm())
    return float((x * y).sum()) / denom if denom > 0 else 0.0


def length_preference(scores: torch.Tensor, pairs: Sequence[Pair]) -> dict[str, Any]:
    """How much a scorer's preferences follow response length (in characters) on `pairs`; `scores` is (N, 2),
    chosen then rejected.

    * ``shorter_chosen``: accuracy on the pairs whose labelled-better response is the shorter one; below 0.5 a
      scorer prefers length over what the label rewards;
    * ``longer_chosen``: accuracy on the pairs whose labelled-better response is the longer one;
    * ``prefers_longer``: of the pairs of unequal length, the share where the scorer scores the longer one higher
      (the labels' own share is ``longer_chosen_share``);
    * ``score_length_corr``: Pearson correlation of score with length over every response scored.
    """
    margins = labelled_margins(scores, pairs)
    d_len = length_margins(pairs)  # labelled side's length minus the other's
    longer = torch.tensor([len(x.chosen) - len(x.rejected) for x in pairs], dtype=torch.float64)
    unequal = longer != 0
    score_d = (scores[:, 0] - scores[:, 1]).double()
    prefers = (torch.sign(score_d) == torch.sign(longer))[unequal].float()
    lengths = torch.tensor([float(len(x.chosen)) for x in pairs] + [float(len(x.rejected)) for x in pairs])
    return {
        "shorter_chosen": Accuracy.of(margins[d_len < 0]).to_dict(),
        "longer_chosen": Accuracy.of(margins[d_len > 0]).to_dict(),
        "longer_chosen_share": round(float((d_len > 0).float().mean()), 4) if len(pairs) else None,
        "prefers_longer": round(float(prefers.mean()), 4) if prefers.numel() else None,
        "score_length_corr": round(_pearson(torch.cat([scores[:, 0], scores[:, 1]]), lengths), 4),
    }


def principle_report(
    scorer: PackageScorer, name: str, pairs: Sequence[Pair], *, single: str | None = None
) -> dict[str, Any]:
    """Accuracy of package `name` on `pairs` (and of the `single` pooled PM), the baselines, its length
    preference (`length_preference`), and the same per data source (`Pair.source`)."""
    scores = scorer.pair_scores(name, pairs)
    single_scores = scorer.pair_scores(single, pairs) if single is not None else None
    untrained = Accuracy.of(labelled_margins(scorer.pair_scores(None, pairs), pairs))
    report: dict[str, Any] = {
        "principle": name,
        "version": scorer.packages[name].version,
        "length_coef": scorer.packages[name].manifest.calibration.length_coef,  # `pm length-correct`'s, 0: none
        "pm": Accuracy.of(labelled_margins(scores, pairs)).to_dict(),
        "longer_wins": Accuracy.of(length_margins(pairs)).to_dict(),
        "untrained_head": untrained.to_dict(),
        "coin_flip": coin_flip(len(pairs)).to_dict(),
        "length": length_preference(scores, pairs),
    }
    if single_scores is not None:
        report["single_pm"] = Accuracy.of(labelled_margins(single_scores, pairs)).to_dict()
    per_source = {}
    for source in sorted({p.source for p in pairs}):
        idx = [i for i, p in enumerate(pairs) if p.source == source]
        part = [pairs[i] for i in idx]
        row = {
            "pm": Accuracy.of(labelled_margins(scores[idx], part)).to_dict(),
            "longer_wins": Accuracy.of(length_margins(part)).to_dict(),
            "length": length_preference(scores[idx], part),
        }
        if single_scores is not None:
            row["single_pm"] = Accuracy.of(labelled_margins(single_scores[idx], part)).to_dict()
        per_source[source] = row
    report["per_source"] = per_source
    return report


# ------------------------------------------------------------------------------------ multi-objective
FIT_OBJECTIVES = ("mean", "worst_kind")
"""How `multi_objective` fits the weights over the kinds of human preference (helpful, harmless, ...)."""


def fit_weights(
    diffs: torch.Tensor,
    *,
    sample_weight: torch.Tensor | None = None,
    groups: torch.Tensor | None = None,
    l2: float = 1e-3,
    steps: int = 2000,
    lr: float = 0.05,
) -> torch.Tensor:
    """Non-negative w maximising the mean log s(diffs @ w) - l2 |w|^2: logistic regression without intercept
    (MORLAIF's PM_regression, Williams 2024, arXiv:2406.07295).

    `diffs` is (N, P): per-principle score of the human-preferred response minus the other's. Without an
    intercept the model is symmetric (swapping a pair flips the sign), as a preference should be. With
    `sample_weight` (N,), a weighted mean. With `groups` (N,) of group ids, the *lowest* of the groups' mean
    log-likelihoods is maximised instead (the worst-group objective of group DRO; Sagawa et al. 2020,
    arXiv:1911.08731): weights that serve every kind of preference, not the kind whose PMs are the most
    confident. Both problems are concave in w; projected (sub)gradient ascent, as P is small. Returns (P,).
    """
    x = diffs.double()
    sw = None if sample_weight is None else sample_weight.double() / sample_weight.double().mean()
    masks = [] if groups is None else [groups == g for g in torch.unique(groups)]
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        ll = torch.nn.functional.logsigmoid(x @ w)
        per_group = [ll[m].mean() for m in masks] or [(ll if sw is None else ll * sw).mean()]
        loss = -torch.stack(per_group).min() + l2 * (w * w).sum()
        loss.backward()
        opt.step()
        with torch.no_grad():
            w.clamp_(min=0.0)
    return w.detach().float()


def agreement_matrix(margins: dict[str, torch.Tensor]) -> tuple[list[str], list[list[float]]]:
    """How often two principles prefer the same response of a pair (sign of their score differences)."""
    names = list(margins)
    m = [[float(((margins[a] > 0) == (margins[b] > 0)).float().mean()) for b in names] for a in names]
    return names, m


@dataclass(kw_only=True)
class MultiObjectiveResult:
    principles: list[str]
    weights: dict[str, float]
    objective: str
    fit_pairs: int
    test_pairs: int
    per_scalarizer: dict[str, Accuracy] = field(default_factory=dict)
    per_principle: dict[str, Accuracy] = field(default_factory=dict)
    single_pm: Accuracy | None = None
    single_pm_name: str | None = None
    longer_wins: Accuracy | None = None
    #: per kind of human preference (the pairs' principle, e.g. helpfulness and harmlessness): test accuracy of
    #: the fitted reward, of each principle alone, of the single PM, and of "longer wins"
    per_kind: dict[str, dict[str, Any]] = field(default_factory=dict)
    margins: dict[str, torch.Tensor] = field(default_factory=dict)  # per principle, over fit and test pairs

    def to_dict(self) -> dict[str, Any]:
        return {
            "principles": self.principles,
            "weights": self.weights,
            "objective": self.objective,
            "fit_pairs": self.fit_pairs,
            "test_pairs": self.test_pairs,
            "per_scalarizer": {k: v.to_dict() for k, v in self.per_scalarizer.items()},
            "per_principle": {k: v.to_dict() for k, v in self.per_principle.items()},
            "single_pm": None if self.single_pm is None else {"name": self.single_pm_name, **self.single_pm.to_dict()},
            "longer_wins": None if self.longer_wins is None else self.longer_wins.to_dict(),
            "per_kind": self.per_kind,
        }


def multi_objective(
    scorer: PackageScorer,
    principles: Sequence[str],
    human: Sequence[Pair],
    *,
    fit_fraction: float = 0.5,
    single_pm: str | None = None,
    salt: str = "fit",
    objective: str = "mean",
) -> MultiObjectiveResult:
    """Fit weights on a fitting split of `human` (by prompt), report test accuracy per scalarizer, and per kind of
    preference (`Pair.principle`: helpful and harmless human preferences are fitted together). `objective`
    (FIT_OBJECTIVES): ``mean`` maximises the kinds' mean log-likelihood, each kind weighing the same however many
    pairs it has (the default); ``worst_kind`` the lowest of them, so that no kind of the fit is traded away for
    another (what it does to preferences outside the fit, e.g. refusing unsafe requests, must be checked: see
    docs/training.md). With one kind the two are the same.

    Raises:
        ValueError: too few pairs to split, or an unknown `objective`.
    """
    if objective not in FIT_OBJECTIVES:
        raise ValueError(f"fit objective {objective!r}: expected one of {', '.join(FIT_OBJECTIVES)}")
    test, fit = split_by_prompt(human, fit_fraction, salt=salt)
    if not fit or not test:
        raise ValueError(f"{len(human)} human pairs are too few to split into fitting and test prompts")
    names = list(principles)

    margins: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def scores(part: Sequence[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        per = [scorer.pair_scores(n, part) for n in names]  # P x (N, 2)
        for n, s in zip(names, per, strict=True):
            margins[n].append(labelled_margins(s, part))
        s = torch.stack(per, dim=2)  # (N, 2, P)
        return s[:, 0, :], s[:, 1, :]

    fit_c, fit_r = scores(fit)
    kinds = sorted({str(p.principle) for p in fit})
    if objective == "worst_kind":
        w = fit_weights(fit_c - fit_r, groups=torch.tensor([kinds.index(str(p.principle)) for p in fit]))
    else:
        kind_count = {k: sum(1 for p in fit if str(p.principle) == k) for k in kinds}
        w = fit_weights(fit_c - fit_r, sample_weight=torch.tensor([1.0 / kind_count[str(p.principle)] for p in fit]))
    if float(w.sum()) <= 0:
        logger.warning("no principle's PM agrees with the fitting pairs; falling back to equal weights")
        w = torch.ones(len(names))
    weights = {n: round(float(x), 6) for n, x in zip(names, w, strict=True)}
    test_c, test_r = scores(test)
    res = MultiObjectiveResult(
        principles=names,
        weights=weights,
        objective=objective,
        fit_pairs=len(fit),
        test_pairs=len(test),
        margins={n: torch.cat(m) for n, m in margins.items()},
    )
    for sname in SCALARIZERS:
        try:
            a = scalarize(test_c, names, name=sname, weights=weights)
            b = scalarize(test_r, names, name=sname, weights=weights)
        except ScalarizeError as e:  # a scalarizer that needs parameters we cannot guess is skipped, and said so
            logger.warning("scalarizer %s skipped: %s", sname, e)
            continue
        res.per_scalarizer[sname] = accuracy(a, b)
    for i, n in enumerate(names):
        res.per_principle[n] = accuracy(test_c[:, i], test_r[:, i])
    single = scorer.pair_scores(single_pm, test) if single_pm is not None else None
    if single is not None:
        res.single_pm, res.single_pm_name = accuracy(single[:, 0], single[:, 1]), single_pm
    res.longer_wins = Accuracy.of(length_margins(test))
    reward_c = scalarize(test_c, names, name="linear", weights=weights)
    reward_r = scalarize(test_r, names, name="linear", weights=weights)
    for kind in sorted({p.principle for p in test}):
        idx = [i for i, p in enumerate(test) if p.principle == kind]
        part = [test[i] for i in idx]
        row: dict[str, Any] = {
            "pairs": len(idx),
            "reward": accuracy(reward_c[idx], reward_r[idx]).to_dict(),
            "per_principle": {n: accuracy(test_c[idx, i], test_r[idx, i]).to_dict() for i, n in enumerate(names)},
            "longer_wins": Accuracy.of(length_margins(part)).to_dict(),
            "reward_length": length_preference(torch.stack([reward_c[idx], reward_r[idx]], dim=1), part),
        }
        if single is not None:
            row["single_pm"] = accuracy(single[idx, 0], single[idx, 1]).to_dict()
        res.per_kind[kind] = row
    return res


def reward_per_source(
    scorer: PackageScorer, principles: Sequence[str], weights: dict[str, float], pairs: Sequence[Pair]
) -> dict[str, dict[str, Any]]:
    """Accuracy of the linear reward with `weights` (over the packages' calibrated scores, as the server
    serves it) on `pairs`, per ``principle/source``."""
    names = list(principles)
    per = torch.stack([scorer.pair_scores(n, pairs) for n in names], dim=2)  # (N, 2, P)
    c = scalarize(per[:, 0, :], names, name="linear", weights=weights)
    r = scalarize(per[:, 1, :], names, name="linear", weights=weights)
    margins = labelled_margins(torch.stack([c, r], dim=1), pairs)
    out = {}
    for key in sorted({f"{p.principle}/{p.source}" for p in pairs}):
        idx = [i for i, p in enumerate(pairs) if f"{p.principle}/{p.source}" == key]
        out[key] = Accuracy.of(margins[idx]).to_dict()
    return out


def write_scalarizer_file(path: Path, weights: dict[str, float], *, name: str = "linear") -> None:
    """The fitted weights as a scalarizer file: `MORLAIF_SCALARIZER_FILE` of the server, the trainer's too."""
    spec = ScalarizerSpec(name=name, weights=weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(spec.model_dump_json(indent=2) + "\n")


def fmt(a: Accuracy | dict[str, Any]) -> str:
    if isinstance(a, Accuracy):
        a = a.to_dict()
    lo, hi = a["ci95"]
    if any(math.isnan(x) for x in (a["accuracy"], lo, hi)):
        return "n/a"
    return f"{a['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"
