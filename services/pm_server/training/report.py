"""`morlaif pm eval`'s figures (PNG) and the markdown report that ties them together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pm_server.training.evaluation import fmt

__all__ = ["write_figures", "write_markdown"]


_FIT_TEXT = {
    "worst_kind": "(the lowest of the kinds' log-likelihoods maximised, so that no kind of preference is traded away)",
    "mean": "(the kinds' log-likelihoods averaged, each kind weighing the same)",
}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bars(ax: Any, labels: list[str], entries: list[dict[str, Any]], color: str) -> None:
    vals = [e["accuracy"] for e in entries]
    lo = [e["accuracy"] - e["ci95"][0] for e in entries]
    hi = [e["ci95"][1] - e["accuracy"] for e in entries]
    ax.bar(range(len(labels)), vals, yerr=[lo, hi], capsize=4, color=color)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% interval)")


def write_figures(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """principles.png, scalarizers.png and agreement.png (those the result has data for)."""
    plt = _plt()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    per = result.get("per_principle") or []
    if per:
        fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(per)), 4))
        width = 0.8 / (5 if "single_pm" in per[0] else 4)
        kinds = [("pm", "PM", "tab:blue")] + ([("single_pm", "single PM", "tab:red")] if "single_pm" in per[0] else [])
        kinds += [
            ("longer_wins", "longer wins", "tab:orange"),
            ("untrained_head", "untrained head", "tab:grey"),
            ("coin_flip", "coin flip", "lightgrey"),
        ]
        for k, (key, label, color) in enumerate(kinds):
            xs = [i + (k - (len(kinds) - 1) / 2) * width for i in range(len(per))]
            vals = [r[key]["accuracy"] for r in per]
            err = [
                [r[key]["accuracy"] - r[key]["ci95"][0] for r in per],
                [r[key]["ci95"][1] - r[key]["accuracy"] for r in per],
            ]
            ax.bar(xs, vals, width, yerr=err, capsize=2, label=label, color=color)
        ax.set_xticks(range(len(per)), [r["principle"] for r in per], rotation=20, ha="right")
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy on the principle's pairs (95% interval)")
        ax.set_title("Per-principle PM accuracy against baselines")
        ax.legend(fontsize=8, loc="lower right")
        written.append(_save(plt, fig, out_dir / "principles.png"))
    mo = result.get("multi_objective")
    if mo and mo.get("per_scalarizer"):
        labels = list(mo["per_scalarizer"])
        entries = [mo["per_scalarizer"][k] for k in labels]
        colors = ["tab:blue"] * len(labels)
        for key, label, color in (("single_pm", "single PM", "tab:red"), ("longer_wins", "longer wins", "tab:orange")):
            if mo.get(key):
                labels.append(label if key != "single_pm" else f"single PM ({mo[key]['name']})")
                entries.append(mo[key])
                colors.append(color)
        fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(labels)), 4))
        _bars(ax, labels, entries, "tab:blue")
        for patch, c in zip(ax.patches, colors, strict=False):
            patch.set_color(c)
        ax.set_title(
            f"Human-preference accuracy on {mo['test_pairs']} held-out pairs (weights fitted on {mo['fit_pairs']})"
        )
        written.append(_save(plt, fig, out_dir / "scalarizers.png"))
    agree = result.get("agreement")
    if agree and agree.get("names"):
        names, m = agree["names"], agree["matrix"]
        fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 1.0 * len(names) + 1.5))
        im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_yticks(range(len(names)), names)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{m[i][j]:.2f}", ha="center", va="center", color="white" if m[i][j] < 0.6 else "black")
        fig.colorbar(im, ax=ax, label="share of pairs where both prefer the same response")
        ax.set_title(f"Principle agreement on {agree['pairs']} pairs")
        written.append(_save(plt, fig, out_dir / "agreement.png"))
    return written


def _num(x: Any) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _per_source(per: list[dict[str, Any]], has_single: bool) -> list[str]:
    """Per data set: accuracy, the single PM's, "longer wins", accuracy where the chosen reply is the shorter
    (and the longer) one, how often the PM prefers the longer reply, and its score's correlation with length."""
    lines = [
        "## Per data set, and the length preference",
        "",
        "Validation pairs of each data set. *shorter chosen*: accuracy on the pairs whose better reply is the "
        "shorter one (below 0.5: the PM prefers length over what the label rewards). *prefers longer*: share of "
        "the pairs of unequal length where the PM scores the longer reply higher, beside the labels' own share "
        "(*longer chosen*). *corr*: Pearson correlation of score with length (characters).",
        "",
    ]
    head = "| principle | data set | pairs | PM |" + (" single PM |" if has_single else "")
    head += " longer wins | shorter chosen | longer chosen | prefers longer | longer chosen share | corr |"
    lines += [head, "|---" * (head.count("|") - 1) + "|"]
    for r in per:
        rows = [("all", r)] + list((r.get("per_source") or {}).items())
        for source, row in rows:
            ln = row.get("length") or {}
            if not ln:
                continue
            single = ""
            if has_single:
                single = f" {fmt(row['single_pm'])} |" if "single_pm" in row else " n/a |"
            lines.append(
                f"| {r['principle']} | {source} | {row['pm']['n']} | {fmt(row['pm'])} |{single} "
                f"{fmt(row['longer_wins'])} | {fmt(ln['shorter_chosen'])} | {fmt(ln['longer_chosen'])} | "
                f"{_num(ln['prefers_longer'])} | {_num(ln['longer_chosen_share'])} | {_num(ln['score_length_corr'])} |"
            )
    lines.append("")
    return lines


def _per_kind(mo: dict[str, Any]) -> list[str]:
    """The fitted reward (what /get_reward serves) per kind of human preference, against the single PM."""
    kinds = mo.get("per_kind") or {}
    if not kinds:
        return []
    names = mo["principles"]
    head = "| human preference | pairs | fitted reward | single PM | longer wins | reward: shorter chosen | "
    head += " | ".join(f"`{n}` alone" for n in names) + " |"
    lines = [
        "### The served reward on each kind of human preference",
        "",
        "The fitted linear reward (what `/get_reward` serves with the written weights.json) on the held-out test "
        "pairs of each kind, against the single pooled PM and each principle alone (95% intervals).",
        "",
        head,
        "|---" * (head.count("|") - 1) + "|",
    ]
    for kind, row in kinds.items():
        single = fmt(row["single_pm"]) if "single_pm" in row else "n/a"
        alone = " | ".join(fmt(row["per_principle"][n]) for n in names)
        lines.append(
            f"| {kind or 'unlabelled'} | {row['pairs']} | {fmt(row['reward'])} | {single} | "
            f"{fmt(row['longer_wins'])} | {fmt(row['reward_length']['shorter_chosen'])} | {alone} |"
        )
    lines.append("")
    return lines


def write_markdown(result: dict[str, Any], out_dir: Path, figures: list[Path]) -> Path:
    """report.md: the tables behind the figures, and what was evaluated on what."""
    lines = ["# PM evaluation", ""]
    lines += [
        f"- base: `{result['base']}` (config {result['base_config_hash']})",
        f"- adapter root: `{result['adapter_root']}`",
    ]
    for d in result.get("data", []):
        lines.append(f"- data: `{d}`")
    lines.append("")
    per = result.get("per_principle") or []
    if per:
        lines += ["## Accuracy per principle", "", "Accuracy on each principle's own pairs, 95% Wilson interval.", ""]
        if result.get("validation_only"):
            lines += ["Only the prompts each package held out for validation are used.", ""]
        has_single = all("single_pm" in r for r in per)
        head = "| principle | version | pairs | PM |" + (" single PM |" if has_single else "")
        head += " longer wins | untrained head | coin flip | length coefficient |"
        lines += [head, "|---" * (head.count("|") - 1) + "|"]
        for r in per:
            single = f" {fmt(r['single_pm'])} |" if has_single else ""
            lines.append(
                f"| {r['principle']} | {r['version']} | {r['pm']['n']} | {fmt(r['pm'])} |{single} "
                f"{fmt(r['longer_wins'])} | {fmt(r['untrained_head'])} | {fmt(r['coin_flip'])} | "
                f"{r.get('length_coef', 0.0):+.3f} |"
            )
        lines += [
            "",
            "*length coefficient*: what the served score subtracts per unit of ln(1 + response characters) before "
            "standardising (`morlaif pm length-correct`; 0: none). Every accuracy here is of the served score.",
        ]
        lines.append("")
        lines += _per_source(per, has_single)
    mo = result.get("multi_objective")
    if mo:
        lines += [
            "## Multi-objective accuracy on human preferences",
            "",
            f"Non-negative linear weights fitted by logistic regression on {mo['fit_pairs']} pairs "
            + _FIT_TEXT.get(mo.get("objective", "mean"), "")
            + f"; accuracy on {mo['test_pairs']} pairs of other prompts.",
            "",
            "| weight | " + " | ".join(mo["principles"]) + " |",
            "|---|" + "---|" * len(mo["principles"]),
            "| fitted | " + " | ".join(f"{mo['weights'][p]:.3f}" for p in mo["principles"]) + " |",
            "",
            "| scorer | test accuracy |",
            "|---|---|",
        ]
        for k, v in mo["per_scalarizer"].items():
            lines.append(f"| scalarizer `{k}` | {fmt(v)} |")
        for k, v in mo["per_principle"].items():
            lines.append(f"| principle `{k}` alone | {fmt(v)} |")
        if mo.get("single_pm"):
            lines.append(f"| single PM `{mo['single_pm']['name']}` | {fmt(mo['single_pm'])} |")
        if mo.get("longer_wins"):
            lines.append(f"| longer wins | {fmt(mo['longer_wins'])} |")
        lines.append("")
        lines += _per_kind(mo)
        if result.get("reward_per_source"):
            lines += [
                "### The served reward on each data set's validation pairs",
                "",
                "The same fitted reward on the held-out pairs of every data set and on every `--check` pair (by "
                "`principle/source`; XSTest's `helpfulness` pairs are safe prompts where answering is better, its "
                "`harmlessness` pairs unsafe ones where refusing is; `refusal-pairs/answer`: a real answer against a "
                "stock refusal, `refusal-pairs/refuse`: a stock refusal against a harmful reply).",
                "",
                "| data set | pairs | served reward |",
                "|---|---|---|",
            ]
            for key, acc in result["reward_per_source"].items():
                lines.append(f"| {key} | {acc['n']} | {fmt(acc)} |")
            lines.append("")
        if result.get("scalarizer_file"):
            lines += [
                f"Fitted weights written to `{result['scalarizer_file']}` (serve with `MORLAIF_SCALARIZER_FILE`).",
                "",
            ]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{f.stem}]({f.name})" for f in figures]
        lines.append("")
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
