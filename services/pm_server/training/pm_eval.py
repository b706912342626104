"""`morlaif pm eval` as a job: load the packages and the pairs, score them, write eval.json, the figures,
report.md and the fitted weights.json. The command (`pm_server.pm_cli`) only parses options and prints.

The maths (accuracies, intervals, the multi-objective fit) is in `pm_server.training.evaluation`, the figures
and the markdown in `pm_server.training.report`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from morlaif.errors import MorlaifError
from pm_server.model.base import load_base
from pm_server.model.package import PackageError, find_packages
from pm_server.training.evaluation import (
    PackageScorer,
    agreement_matrix,
    fmt,
    labelled_margins,
    multi_objective,
    principle_report,
    reward_per_source,
    write_scalarizer_file,
)
from pm_server.training.pairs import Pair, PairDataError, load_pairs, pair_bucket
from pm_server.training.report import write_figures, write_markdown

__all__ = ["EvalError", "run_pm_eval"]


class EvalError(MorlaifError):
    """`pm eval` cannot run as asked: no such package, no data, a base that does not load, a package without
    the validation split that --validation-only needs. The message names the option or package."""


def _unique(pairs: list[Pair]) -> list[Pair]:
    """`pairs` without repeats (one file given with and without a principle override holds some pairs twice):
    no pair counts twice in an accuracy."""
    seen: set[tuple[str, str, str, str]] = set()
    out = []
    for p in pairs:
        key = (p.prompt, p.chosen, p.rejected, p.principle)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def run_pm_eval(
    *,
    data: Sequence[str] | None,
    store: str | None,
    judge: str | None,
    human: Sequence[str] | None,
    adapter_root: Path,
    check: Sequence[str] | None = None,
    principles: Sequence[str] | None,
    single: str | None,
    base: str,
    validation_only: bool,
    fit_fraction: float,
    out: Path,
    device: str,
    dtype: str,
    fit_objective: str = "mean",
    echo: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Evaluate the packages under `adapter_root` (`principles`, default: all but `single`) on their own
    principles' pairs (`data` specs and/or the `store`'s labels) and, with `human` preference specs, the
    scalarized PMs against the `single` pooled PM, the weights fitted by `fit_objective` (FIT_OBJECTIVES), and the
    fitted reward on every package's validation pairs and on the `check` specs' pairs (outside the fit, all kept).
    Writes `out`/eval.json, report.md, the PNGs and weights.json; says each headline figure through `echo`;
    returns eval.json's content.

    Raises:
        EvalError: a package, the data or the base is missing or unusable (the message says which).
    """
    found = [n for n, _ in find_packages(adapter_root)]
    names = list(principles) if principles else [n for n in found if n != single]
    missing = [n for n in [*names, *([single] if single else [])] if n not in found]
    if missing:
        shown = ", ".join(found) or "none"
        raise EvalError(f"no package for {', '.join(missing)} under {adapter_root} (found: {shown})")
    if not names:
        raise EvalError(f"no packages to evaluate under {adapter_root}")
    try:
        pairs, sources = load_pairs(data, store, judge, names)
        human_pairs, human_sources = load_pairs(human, None, None, None)
        check_pairs, check_sources = load_pairs(check, None, None, None)
    except PairDataError as e:
        raise EvalError(str(e)) from None
    pairs, human_pairs = _unique(pairs), _unique(human_pairs)
    if check_pairs and not human_pairs:
        raise EvalError("--check scores the reward fitted on the --human pairs: give --human too")
    try:
        b = load_base(base, device=device, dtype=dtype)
    except (OSError, ValueError) as e:
        raise EvalError(f"cannot load base model {base!r}: {e}") from None
    scorer = PackageScorer(b, adapter_root)
    try:
        for n in [*names, *([single] if single else [])]:
            scorer.load(n)
    except PackageError as e:
        raise EvalError(str(e)) from None

    def held_out(name: str, part: list[Pair]) -> list[Pair]:
        split = scorer.packages[name].manifest.provenance.get("split") or {}
        if not validation_only:
            return part
        if "val_fraction" not in split:
            raise EvalError(f"package {name} records no validation split; drop --validation-only")
        return [p for p in part if pair_bucket(p, split.get("salt", "")) < split["val_fraction"]]

    result: dict[str, Any] = {
        "base": base,
        "base_config_hash": b.config_hash,
        "adapter_root": str(adapter_root),
        "data": [json.dumps(s) for s in [*sources, *human_sources, *check_sources]],
        "validation_only": validation_only,
        "per_principle": [],
    }
    for n in names:
        own = held_out(n, [p for p in pairs if p.principle == n])
        if own:
            # the single PM on the same held-out prompts (same split salt): a fair per-principle comparison
            r = principle_report(scorer, n, own, single=single)
            result["per_principle"].append(r)
            echo(
                f"{n}: PM {fmt(r['pm'])}  shorter chosen {fmt(r['length']['shorter_chosen'])}  "
                f"longer wins {fmt(r['longer_wins'])}  untrained {fmt(r['untrained_head'])}"
            )
            for source, row in r["per_source"].items():
                echo(f"  {source}: PM {fmt(row['pm'])}  shorter chosen {fmt(row['length']['shorter_chosen'])}")
    if human_pairs:
        try:
            mo = multi_objective(
                scorer, names, human_pairs, fit_fraction=fit_fraction, single_pm=single, objective=fit_objective
            )
        except ValueError as e:
            raise EvalError(str(e)) from None
        result["multi_objective"] = mo.to_dict()
        agree_names, matrix = agreement_matrix(mo.margins)  # the margins multi_objective already scored
        result["agreement"] = {"names": agree_names, "matrix": matrix, "pairs": len(human_pairs)}
        weights_file = out / "weights.json"
        write_scalarizer_file(weights_file, mo.weights)
        result["scalarizer_file"] = str(weights_file)
        best = max(mo.per_scalarizer.items(), key=lambda kv: kv[1].value)
        echo(f"human preferences ({mo.test_pairs} test pairs): best scalarizer {best[0]} {fmt(best[1])}")
        if mo.single_pm is not None:
            echo(f"single PM {single}: {fmt(mo.single_pm)}")
        for kind, row in mo.per_kind.items():
            single_txt = f"  single PM {fmt(row['single_pm'])}" if "single_pm" in row else ""
            echo(f"  {kind or 'unlabelled'} ({row['pairs']} pairs): fitted reward {fmt(row['reward'])}{single_txt}")
        echo(f"fitted weights: {json.dumps(mo.weights)} -> {weights_file}")
        # the served reward on every data set's held-out pairs: XSTest's safe prompts (answer) and unsafe ones
        # (refuse), BBQ, ParaDetox, ...: what the fitted weights do outside the human preferences they fit
        seen: set[tuple[str, str, str]] = set()
        checked = []
        own_held_out = [p for n in names for p in held_out(n, [p for p in pairs if p.principle == n])]
        for p in [*own_held_out, *check_pairs]:  # --check: pairs no package trained on, none dropped
            if (p.prompt, p.chosen, p.rejected) not in seen:  # a pair relabelled by a spec counts once
                seen.add((p.prompt, p.chosen, p.rejected))
                checked.append(p)
        if checked:
            result["reward_per_source"] = reward_per_source(scorer, names, mo.weights, checked)
            for key, acc in result["reward_per_source"].items():
                echo(f"  served reward on {key}: {fmt(acc)}")
    elif result["per_principle"]:
        # without human pairs, the agreement heatmap is over all evaluated pairs
        allp = [p for p in pairs if p.principle in names]
        margins = {n: labelled_margins(scorer.pair_scores(n, allp), allp) for n in names}
        agree_names, matrix = agreement_matrix(margins)
        result["agreement"] = {"names": agree_names, "matrix": matrix, "pairs": len(allp)}
    if not result["per_principle"] and not human_pairs:
        raise EvalError("nothing to evaluate: give --data with pairs of the packages' principles, --store, or --human")
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    figures = write_figures(result, out)
    report = write_markdown(result, out, figures)
    echo(f"report: {report}")
    return result
