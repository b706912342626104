"""Length correction of a trained PM: take the part of its score that follows response length out of what it serves.

Length-balanced pair weights (`trainer.length_balance_weights`) give "the longer reply wins" nothing to gain in
the loss, yet a PM can still come out leaning on length: the default helpfulness PM, trained that way, was right
on 0.74 of its training pairs where the better reply is the longer one and on 0.56 where it is the shorter one
(0.71 and 0.49 on its validation pairs). ODIN's decorrelation term in the loss (Chen et al. 2024,
arXiv:2402.07319; `pm train --length-penalty`) cost it 2-5 points of accuracy for less than one point there.

This module corrects after training instead, in the spirit of length-controlled AlpacaEval (Dubois et al. 2024,
arXiv:2404.04475), which regresses the length difference out of a judge's preference: one coefficient per
package, ``length_coef`` in its `Calibration`, and the served score is
``(raw - length_coef * ln(1 + response characters) - mean) / std``. The coefficient is chosen on the package's
*training* pairs (its validation pairs stay unseen) by one criterion: the PM must be as accurate where the better
reply is the shorter one as where it is the longer one (`fit_length_coef`). The criterion, not a target
correlation, is what "no length shortcut" asks: a PM that wins by preferring length is right on one side and
wrong on the other. It costs the pairs the PM got right *because* the longer reply was better, and says so
(`LengthCorrection`: accuracy before and after, on both sides, training and validation).

`length_correct_package` refits a package's coefficient and writes it as a new version beside the old one (same
weights; calibration, metrics and provenance updated): `morlaif pm length-correct`.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from morlaif.errors import MorlaifError
from morlaif.protocol import Calibration, length_feature
from morlaif.runs import git_commit
from pm_server.model.base import load_base
from pm_server.model.package import (
    MANIFEST,
    VERSION_RE,
    PackageError,
    write_manifest,
)
from pm_server.training.evaluation import Accuracy, PackageScorer, labelled_margins
from pm_server.training.pairs import Pair, PairDataError, package_pairs
from pm_server.training.trainer import calibrate

__all__ = ["LengthCorrection", "LengthCorrectionError", "fit_length_coef", "length_correct_package", "side_accuracy"]

MIN_PAIRS = 30
"""Fewest training pairs needed on each side (better reply shorter / longer) to fit a coefficient."""


class LengthCorrectionError(MorlaifError):
    """A package cannot be length-corrected: its training data is gone or changed, too few pairs of one side,
    the new version exists. The message names the package, file or option."""


def _length_diff(pairs: Sequence[Pair]) -> torch.Tensor:
    """(N,) ln(1 + characters) of the labelled-better response minus the other's."""
    d = torch.tensor([length_feature(p.chosen) - length_feature(p.rejected) for p in pairs], dtype=torch.float64)
    p = torch.tensor([x.p for x in pairs])
    return torch.where(p >= 0.5, d, -d)


def side_accuracy(margins: torch.Tensor, length_diff: torch.Tensor, coef: float) -> tuple[Accuracy, Accuracy]:
    """Accuracy of the corrected score (margin - coef * length_diff) on the pairs whose better reply is the shorter
    one (``length_diff < 0``) and on those where it is the longer one (``> 0``); (N,) tensors as `fit_length_coef`."""
    m = margins.double() - coef * length_diff
    return Accuracy.of(m[length_diff < 0]), Accuracy.of(m[length_diff > 0])


def fit_length_coef(margins: torch.Tensor, length_diff: torch.Tensor, *, min_pairs: int = MIN_PAIRS) -> float:
    """The length coefficient that makes a PM as accurate where the better reply is shorter as where it is longer.

    `margins` (N,): raw score of the labelled-better response minus the other's; `length_diff` (N,): its
    `length_feature` minus the other's. With the corrected margin ``m(b) = margin - b * length_diff``, accuracy on
    the shorter-better side rises with b and on the longer-better side falls, so their gap is monotone in b; the
    coefficient is where it crosses zero (exactly, from the breakpoints ``margin / length_diff``; among equally
    good values the one nearest 0, so a PM already balanced keeps 0). Units: raw score per unit of ln(1 + chars).

    Raises:
        LengthCorrectionError: fewer than `min_pairs` pairs on either side.
    """
    margins, length_diff = margins.double(), length_diff.double()
    short, long_ = length_diff < 0, length_diff > 0
    n_s, n_l = int(short.sum()), int(long_.sum())
    if min(n_s, n_l) < min_pairs:
        raise LengthCorrectionError(
            f"{n_s} pairs where the better reply is the shorter and {n_l} where it is the longer: "
            f"a coefficient needs at least {min_pairs} of each"
        )
    t_s = torch.sort(margins[short] / length_diff[short]).values  # shorter-better pair i is right iff b > t_i
    t_l = torch.sort(margins[long_] / length_diff[long_]).values  # longer-better pair i is right iff b < t_i
    points = torch.unique(torch.cat([t_s, t_l]))
    candidates = torch.cat([points[:1] - 1.0, (points[1:] + points[:-1]) / 2, points[-1:] + 1.0, torch.zeros(1)])
    acc_s = torch.searchsorted(t_s, candidates, side="left").double() / n_s  # count of t_s < b
    acc_l = (n_l - torch.searchsorted(t_l, candidates, side="right")).double() / n_l  # count of t_l > b
    gap = (acc_s - acc_l).abs()
    best = gap <= gap.min() + 1e-12
    return float(candidates[best][candidates[best].abs().argmin()])


@dataclass(kw_only=True)
class LengthCorrection:
    """What `length_correct_package` did: the coefficient and the accuracy it changed, before and after."""

    principle: str
    from_version: str
    version: str
    path: Path
    coef: float
    calibration: Calibration
    #: {"train" | "validation": {"before" | "after": {"all" | "shorter_better" | "longer_better": Accuracy}}}
    accuracy: dict[str, dict[str, dict[str, Accuracy]]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "criterion": "equal accuracy where the better reply is shorter and where it is longer, on training pairs",
            "length_coef": round(self.coef, 6),
            "feature": "ln(1 + response characters)",
            "from_version": self.from_version,
            **{
                part: {when: {k: a.to_dict() for k, a in row.items()} for when, row in d.items()}
                for part, d in self.accuracy.items()
            },
        }


def length_correct_package(
    root: Path,
    principle: str,
    *,
    base: str,
    device: str = "auto",
    dtype: str = "float32",
    version: str | None = None,
    from_version: str | None = None,
    min_pairs: int = MIN_PAIRS,
    echo: Callable[[str], Any] = print,
) -> LengthCorrection:
    """Fit `principle`'s length coefficient on the training pairs of its package `from_version` (default: the newest)
    under `root`, scored in `dtype` (float32: as trained), and write the package again as `version` (default: the
    old version + "-lc"): same weights, the new `Calibration` (mean and std of the corrected raw scores on the
    validation pairs, as `pm train` computes them), the accuracies in metrics["length_correction"], and in
    provenance["length_correction"] where it came from (the training's own provenance is kept).

    Raises:
        LengthCorrectionError: see `pairs.package_pairs` and `fit_length_coef`; the package does not load or is already
            length-corrected; `version` is invalid or exists.
    """
    try:
        scorer = PackageScorer(load_base(base, device=device, dtype=dtype), root)
        pkg = scorer.load(principle, from_version)
    except (PackageError, OSError, ValueError) as e:
        raise LengthCorrectionError(f"{principle}: {e}") from None
    done = pkg.manifest.calibration.length_coef
    if done != 0.0:
        source = (pkg.manifest.provenance.get("length_correction") or {}).get("from_version", "its source")
        raise LengthCorrectionError(
            f"{principle} {pkg.version} is already length-corrected (coefficient {done:+.4f}, from {source}): "
            f"to refit, correct the uncorrected package: --from-version {source} --version NEW"
        )
    new_version = version or f"{pkg.version}-lc"
    if not VERSION_RE.match(new_version):
        raise LengthCorrectionError(f"--version {new_version!r} is not a version name (letters, digits, ., _, -)")
    new_dir = pkg.path.parent / new_version
    if new_dir.exists():
        raise LengthCorrectionError(f"{new_dir} exists: give another --version")
    try:
        train, val = package_pairs(pkg.manifest.provenance, principle)
    except PairDataError as e:
        raise LengthCorrectionError(str(e)) from None
    if not val:
        raise LengthCorrectionError(f"package {principle} has no validation pairs to calibrate on")
    echo(f"{principle} {pkg.version}: scoring {len(train)} training and {len(val)} validation pairs")
    raw = {
        part: scorer.pair_scores(principle, ps, normalized=False)
        for part, ps in (("train", train), ("validation", val))
    }
    margins = {part: labelled_margins(raw[part], ps) for part, ps in (("train", train), ("validation", val))}
    diffs = {"train": _length_diff(train), "validation": _length_diff(val)}
    coef = fit_length_coef(margins["train"], diffs["train"], min_pairs=min_pairs)
    accuracy: dict[str, dict[str, dict[str, Accuracy]]] = {}
    for part in ("train", "validation"):
        accuracy[part] = {}
        for when, b in (("before", 0.0), ("after", coef)):
            shorter, longer = side_accuracy(margins[part], diffs[part], b)
            overall = Accuracy.of(margins[part].double() - b * diffs[part])
            accuracy[part][when] = {"all": overall, "shorter_better": shorter, "longer_better": longer}
    val_lengths = torch.tensor([length_feature(r) for p in val for r in (p.chosen, p.rejected)], dtype=torch.float64)
    val_raw = torch.stack([raw["validation"][:, 0], raw["validation"][:, 1]], dim=1).reshape(-1).double()
    cal = calibrate(val_raw - coef * val_lengths)
    calibration = Calibration(mean=cal.mean, std=cal.std, length_coef=coef)
    result = LengthCorrection(
        principle=principle,
        from_version=pkg.version,
        version=new_version,
        path=new_dir,
        coef=coef,
        calibration=calibration,
        accuracy=accuracy,
    )
    manifest = pkg.manifest.model_copy(deep=True)
    manifest.calibration = calibration
    after = accuracy["validation"]["after"]["all"]
    manifest.metrics["length_correction"] = result.to_dict()
    manifest.metrics["val_accuracy"] = round(after.value, 4)
    manifest.metrics["val_accuracy_ci95"] = [round(after.low, 4), round(after.high, 4)]
    manifest.provenance["length_correction"] = {
        "from_version": pkg.version,
        "train_pairs": len(train),
        "git_commit": git_commit(),
        "trainer": "morlaif pm length-correct",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    manifest.provenance["version"] = new_version
    tmp = new_dir.parent / f".{new_version}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for f in pkg.path.iterdir():
        if f.is_file() and f.name != MANIFEST:
            shutil.copy2(f, tmp / f.name)
    write_manifest(tmp, manifest)
    tmp.rename(new_dir)  # a server scanning the root never sees half a package
    return result
