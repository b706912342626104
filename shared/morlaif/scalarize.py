"""Scalarizers: many per-principle scores in, one reward out.

Every scalarizer maps a ``(batch, principles)`` tensor of scores and a weight per principle to one
reward per sample, reducing over principles (dim 1), never over the batch.

Conventions, common to all:

* ``weights`` maps every scored principle to a finite weight >= 0 (``None``: all 1). A principle of
  weight 0 is removed before the reduction, as if it had not been scored. At least one weight must be > 0.
* ``linear`` and ``chebyshev`` use the weights as given; the others need a distribution over principles
  and use the weights divided by their sum.
* The default forms are monotone non-decreasing in every principle's score (property-tested): PPO needs
  a reward that never falls when one principle improves. MORLAIF's own soft max-min (a softmin-weighted
  average) and uncertainty-weighted mean - lambda * variance are NOT monotone once scores spread out;
  they are here as ``soft_max_min_morlaif`` and ``uncertainty_weighted_morlaif`` for comparison.

Usage::

    import torch
    from morlaif.scalarize import scalarize
    scores = torch.tensor([[0.5, -1.0], [2.0, 0.0]])          # (B=2, P=2)
    scalarize(scores, ["helpfulness", "harmlessness"], name="soft_max_min",
              weights={"helpfulness": 1.0, "harmlessness": 2.0}, params={"temperature": 0.5})
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from morlaif.errors import ScalarizeError

__all__ = ["SCALARIZERS", "ScalarizerInfo", "scalarize", "resolve_weights"]

# Tolerance on cumulative weights when a quantile falls exactly on a boundary between two principles.
_CUM_EPS = 1e-6


@dataclass(frozen=True, slots=True)
class ScalarizerInfo:
    """A registered scalarizer: its function, whether it is monotone, and its parameters' defaults."""

    name: str
    fn: Callable[..., torch.Tensor]
    monotone: bool
    summary: str

    @property
    def params(self) -> dict[str, Any]:
        sig = inspect.signature(self.fn)
        return {k: p.default for k, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}

    def __repr__(self) -> str:
        return f"ScalarizerInfo(name={self.name!r}, monotone={self.monotone}, params={self.params})"


SCALARIZERS: dict[str, ScalarizerInfo] = {}


def _register(name: str, *, monotone: bool) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    def deco(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        summary = (fn.__doc__ or "").strip().splitlines()[0]
        SCALARIZERS[name] = ScalarizerInfo(name=name, fn=fn, monotone=monotone, summary=summary)
        return fn

    return deco


# ---------------------------------------------------------------------------------------------- checks
def _number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScalarizeError(f"must be a number, got {type(value).__name__}", field=field)
    if not math.isfinite(value):
        raise ScalarizeError(f"must be finite, got {value}", field=field)
    return float(value)


def _positive(field: str, value: Any) -> float:
    v = _number(field, value)
    if v <= 0:
        raise ScalarizeError(f"must be > 0, got {v}", field=field)
    return v


def _non_negative(field: str, value: Any) -> float:
    v = _number(field, value)
    if v < 0:
        raise ScalarizeError(f"must be >= 0, got {v}", field=field)
    return v


def _per_principle(field: str, value: Any, names: Sequence[str], default: float) -> torch.Tensor:
    """A number for all principles, or a mapping principle -> number (missing ones get `default`)."""
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ScalarizeError(
                f"names principles that are not scored: {', '.join(unknown)}; scored: {', '.join(names)}",
                field=field,
            )
        vals = [_number(f"{field}.{n}", value[n]) if n in value else default for n in names]
    else:
        vals = [_number(field, value)] * len(names)
    return torch.tensor(vals, dtype=torch.float64)


def resolve_weights(principles: Sequence[str], weights: Mapping[str, float] | None) -> torch.Tensor:
    """Weights as a (P,) tensor in the order of `principles`; raises `ScalarizeError` naming the problem."""
    if weights is None:
        return torch.ones(len(principles), dtype=torch.float64)
    unknown = sorted(set(weights) - set(principles))
    if unknown:
        raise ScalarizeError(
            f"weights for principles that are not scored: {', '.join(unknown)}; scored: {', '.join(principles)}",
            field="scalarizer.weights",
        )
    missing = [p for p in principles if p not in weights]
    if missing:
        raise ScalarizeError(
            f"no weight for scored principles: {', '.join(missing)} (give every scored principle a weight; "
            "0 removes it)",
            field="scalarizer.weights",
        )
    w = torch.tensor([_non_negative(f"scalarizer.weights.{p}", weights[p]) for p in principles], dtype=torch.float64)
    if not bool((w > 0).any()):
        raise ScalarizeError("at least one weight must be > 0", field="scalarizer.weights")
    return w


def scalarize(
    scores: torch.Tensor,
    principles: Sequence[str],
    *,
    name: str = "linear",
    weights: Mapping[str, float] | None = None,
    params: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """One reward per sample: `scores` is (B, P) with columns in the order of `principles`; returns (B,).

    Raises `ScalarizeError` (naming the field) on an unknown scalarizer or parameter, bad weights, non-finite
    scores, and when finite scores and parameters still give a non-finite reward (overflow): a reward is never
    NaN or infinite.
    """
    info = SCALARIZERS.get(name)
    if info is None:
        raise ScalarizeError(f"unknown scalarizer {name!r}; known: {', '.join(SCALARIZERS)}", field="scalarizer.name")
    if len(set(principles)) != len(principles):
        raise ScalarizeError("principles must not repeat", field="principles")
    if scores.ndim != 2 or scores.shape[1] != len(principles):
        raise ScalarizeError(f"scores must be (batch, {len(principles)}), got {tuple(scores.shape)}", field="scores")
    if scores.shape[1] == 0:
        raise ScalarizeError("no principle to scalarize", field="principles")
    r = scores.to(torch.float64)
    if not bool(torch.isfinite(r).all()):
        raise ScalarizeError("scores must be finite (got NaN or inf)", field="scores")
    w = resolve_weights(principles, weights)
    known = info.params
    given = dict(params or {})
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ScalarizeError(
            f"unknown parameter(s) {', '.join(unknown)} for {name!r}; it takes: {', '.join(known) or 'none'}",
            field="scalarizer.params",
        )
    active = w > 0
    names = [p for p, a in zip(principles, active.tolist(), strict=True) if a]
    out = info.fn(r[:, active], w[active], names, **given).to(  # (B,)
        scores.dtype if scores.is_floating_point() else torch.float32
    )
    bad = (~torch.isfinite(out)).nonzero()
    if len(bad):  # finite inputs and parameters can still overflow (weights 1e308, a temperature of 1e-320)
        raise ScalarizeError(
            f"{name!r} gives a non-finite reward ({out[bad[0, 0]].item()}) for item {bad[0, 0].item()} of "
            f"{len(out)}: its weights or parameters overflow; use smaller weights or saner parameters",
            field="scalarizer",
        )
    return out


def _dist(w: torch.Tensor) -> torch.Tensor:
    return w / w.sum()


# ------------------------------------------------------------------------------------ the scalarizers
@_register("linear", monotone=True)
def linear(r: torch.Tensor, w: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """Weighted sum: sum_i w_i r_i (weights as given, not normalised)."""
    return r @ w


@_register("max_min", monotone=True)
def max_min(r: torch.Tensor, w: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """The worst principle: min_i r_i over principles of weight > 0."""
    return r.min(dim=1).values


@_register("soft_max_min", monotone=True)
def soft_max_min(r: torch.Tensor, w: torch.Tensor, names: Sequence[str], *, temperature: float = 1.0) -> torch.Tensor:
    """Smooth minimum -T log sum_i p_i exp(-r_i / T), between the min (T -> 0) and the weighted mean (T -> inf)."""
    t = _positive("scalarizer.params.temperature", temperature)
    logp = torch.log(_dist(w))
    return -t * torch.logsumexp(logp - r / t, dim=1)


@_register("soft_max_min_morlaif", monotone=False)
def soft_max_min_morlaif(
    r: torch.Tensor, w: torch.Tensor, names: Sequence[str], *, temperature: float = 1.0
) -> torch.Tensor:
    """MORLAIF's softmin-weighted average sum_i softmin(r / T)_i r_i. NOT monotone for spread-out scores."""
    t = _positive("scalarizer.params.temperature", temperature)
    a = torch.softmax(torch.log(_dist(w)) - r / t, dim=1)  # (B, P)
    return (a * r).sum(dim=1)


def _huber(d: torch.Tensor, delta: float) -> torch.Tensor:
    """d^2 inside [-delta, delta], continued linearly outside (so its slope is bounded by 2 delta)."""
    a = d.abs()
    return torch.where(a <= delta, d * d, 2 * delta * a - delta * delta)


@_register("uncertainty_weighted", monotone=True)
def uncertainty_weighted(r: torch.Tensor, w: torch.Tensor, names: Sequence[str], *, lam: float = 0.5) -> torch.Tensor:
    """Mean minus lam * spread, with the variance's square made linear past 1/(4 lam) so it stays monotone.

    d/dr_i = p_i (1 - lam (phi'(d_i) - sum_j p_j phi'(d_j))) with |phi'| <= 2 delta = 1 / (2 lam), hence >= 0.
    Equal to mean - lam * variance while every deviation from the mean is at most 1 / (4 lam).
    """
    lam_ = _non_negative("scalarizer.params.lam", lam)
    p = _dist(w)
    mean = r @ p  # (B,)
    if lam_ == 0:
        return mean
    spread = _huber(r - mean[:, None], 1.0 / (4.0 * lam_)) @ p  # (B,)
    return mean - lam_ * spread


@_register("uncertainty_weighted_morlaif", monotone=False)
def uncertainty_weighted_morlaif(
    r: torch.Tensor, w: torch.Tensor, names: Sequence[str], *, lam: float = 0.5
) -> torch.Tensor:
    """MORLAIF's mean - lam * variance across principles. NOT monotone once scores spread out."""
    lam_ = _non_negative("scalarizer.params.lam", lam)
    p = _dist(w)
    mean = r @ p
    var = ((r - mean[:, None]) ** 2) @ p
    return mean - lam_ * var


@_register("lower_quantile", monotone=True)
def lower_quantile(r: torch.Tensor, w: torch.Tensor, names: Sequence[str], *, q: float = 1 / 3) -> torch.Tensor:
    """Mean of the lowest q of the weight mass (lower third by default; MORLAIF's `lower_third` for 3k principles)."""
    q_ = _number("scalarizer.params.q", q)
    if not 0 < q_ <= 1:
        raise ScalarizeError(f"must be in (0, 1], got {q_}", field="scalarizer.params.q")
    vals, idx = r.sort(dim=1)  # (B, P)
    ws = _dist(w)[idx]  # (B, P)
    before = ws.cumsum(dim=1) - ws
    take = (q_ - before).clamp(min=0.0).minimum(ws)  # mass each sorted principle contributes
    return (take * vals).sum(dim=1) / take.sum(dim=1)


def _weighted_quantile(r: torch.Tensor, w: torch.Tensor, q: float) -> torch.Tensor:
    """Midpoint of the lower and upper weighted q-quantiles (the usual median for even counts)."""
    vals, idx = r.sort(dim=1)
    cum = _dist(w)[idx].cumsum(dim=1)  # (B, P)
    last = r.shape[1] - 1
    lo = (cum < q - _CUM_EPS).sum(dim=1).clamp(max=last)  # first index with cum >= q
    hi = (cum <= q + _CUM_EPS).sum(dim=1).clamp(max=last)  # first index with cum > q
    return 0.5 * (vals.gather(1, lo[:, None]) + vals.gather(1, hi[:, None])).squeeze(1)


@_register("median", monotone=True)
def median(r: torch.Tensor, w: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """Weighted median across principles (mean of the two middle scores when the weight splits evenly)."""
    return _weighted_quantile(r, w, 0.5)


@_register("bernoulli_nash", monotone=True)
def bernoulli_nash(r: torch.Tensor, w: torch.Tensor, names: Sequence[str], *, shift: float = 3.0) -> torch.Tensor:
    """Weighted geometric mean of (r_i + shift), minus shift; r_i + shift is floored at 1e-6 to stay positive."""
    s = _number("scalarizer.params.shift", shift)
    logs = torch.log((r + s).clamp(min=1e-6))
    return torch.exp(logs @ _dist(w)) - s


@_register("lexicographic", monotone=True)
def lexicographic(
    r: torch.Tensor,
    w: torch.Tensor,
    names: Sequence[str],
    *,
    priority: Sequence[str] | None = None,
    thresholds: Mapping[str, float] | None = None,
    base: float = 10.0,
) -> torch.Tensor:
    """Priorities with thresholds: sum_k base^-k min(r_(k), tau_(k)) / sum_k base^-k over principles by priority.

    A principle counts only up to its threshold (default: no cap), and each level outweighs the next by
    `base`, so improving a higher-priority principle below its threshold dominates. Priority defaults to
    descending weight (ties in the order scored). The reward equals r when every principle scores r.
    """
    b = _number("scalarizer.params.base", base)
    if b < 1:
        raise ScalarizeError(f"must be >= 1, got {b}", field="scalarizer.params.base")
    if priority is None:
        order = sorted(range(len(names)), key=lambda i: -float(w[i]))
    else:
        if isinstance(priority, str) or not isinstance(priority, Sequence):
            raise ScalarizeError("must be a list of principle names", field="scalarizer.params.priority")
        unknown = [p for p in priority if p not in names]
        if unknown:
            raise ScalarizeError(
                f"names principles that are not scored (or have weight 0): {', '.join(map(str, unknown))}",
                field="scalarizer.params.priority",
            )
        if len(set(priority)) != len(priority):
            raise ScalarizeError("must not repeat a principle", field="scalarizer.params.priority")
        listed = [names.index(p) for p in priority]
        order = listed + [i for i in range(len(names)) if i not in listed]
    if thresholds is not None and not isinstance(thresholds, Mapping):
        raise ScalarizeError("must map principle names to numbers", field="scalarizer.params.thresholds")
    tau = _per_principle("scalarizer.params.thresholds", thresholds or {}, names, math.inf)
    capped = torch.minimum(r, tau)[:, order]  # (B, P) in priority order
    level = torch.tensor([b ** (-k) for k in range(len(order))], dtype=r.dtype)
    return capped @ level / level.sum()


@_register("chebyshev", monotone=True)
def chebyshev(
    r: torch.Tensor,
    w: torch.Tensor,
    names: Sequence[str],
    *,
    reference: float | Mapping[str, float] = 3.0,
    rho: float = 0.0,
) -> torch.Tensor:
    """Weighted Chebyshev: -max_i w_i (z_i - r_i) + rho sum_i w_i r_i, z the reference (utopia) point."""
    z = _per_principle("scalarizer.params.reference", reference, names, 3.0)
    rho_ = _non_negative("scalarizer.params.rho", rho)
    return -((z - r) * w).max(dim=1).values + rho_ * (r @ w)
