"""Append the PM studies' tables to a `pm eval` report: every `base_comparison*.json`
(benchmarks/base_comparison.py) and `length_context*.json` (benchmarks/pm_length_context.py) in the folder.

    python benchmarks/pm_eval_tables.py docs/pm-eval          # scripts/eval_default_adapters.sh runs it

The JSON files are the record: this only formats them, so report.md is regenerated from data, never edited.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

MARK = "<!-- the studies' tables (benchmarks/pm_eval_tables.py) -->"


def _ci(acc: float, ci: list[float]) -> str:
    return f"{acc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _a(d: dict[str, Any]) -> str:
    return "n/a" if not d or d.get("n", 1) == 0 else _ci(d["accuracy"], d["ci95"])


def base_tables(files: list[Path]) -> list[str]:
    lines = [
        "## Base model: MiniLM-L6 or SmolLM2-135M",
        "",
        "`benchmarks/base_comparison.py`: one principle's PM trained with each base on the same pairs, split, settings "
        "and seed (2-core CPU; training in float32, or bfloat16 autocast where *bf16*); validation accuracy with its "
        "95% interval, training time, scoring speed (float32); with `--eval-data`, accuracy on held-out pairs of "
        "other prompts, and on those of them whose better reply is the shorter one.",
        "",
        "| file | principle | max length | base | parameters (M) | train pairs | validation accuracy | training "
        "| pairs/s | scoring (sequences/s) | held-out accuracy | held-out, shorter chosen |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in files:
        d = json.loads(f.read_text())
        args = d["meta"]["args"]
        for r in d["rows"]:
            bf16 = " (bf16)" if args.get("bf16") else ""
            lines.append(
                f"| {f.name} | {args['principle']} | {args['max_length']} | {r['base']} | {r['params_m']} | "
                f"{r['train_pairs']} | {_ci(r['val_accuracy'], r['val_accuracy_ci95'])} | {r['train_s']:.0f} s{bf16} | "
                f"{r['train_pairs_per_s']} | {r['score_seqs_per_s']} | {_a(r.get('held_out', {}))} | "
                f"{_a(r.get('held_out_shorter_chosen', {}))} |"
            )
    return [*lines, ""]


def cut_table(files: list[Path]) -> list[str]:
    lines = [
        "## How much each context window cuts",
        "",
        "Share of the (prompt, response) inputs longer than the window, by the MiniLM tokenizer (the prompt loses its "
        "start first).",
        "",
        "| file | principle | pairs | " + " | ".join(f"{n} tokens" for n in (64, 128, 256, 512)) + " |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in files:
        d = json.loads(f.read_text())
        cuts = d["cut_share"]
        shown = " | ".join(f"{cuts[str(n)]:.0%}" if str(n) in cuts else "" for n in (64, 128, 256, 512))
        lines.append(f"| {f.name} | {d['meta']['args']['principle']} | {d['meta']['pairs']} | {shown} |")
    return [*lines, ""]


def length_tables(files: list[Path]) -> list[str]:
    lines = [
        "## Context length and the length shortcut",
        "",
        "`benchmarks/pm_length_context.py`: one principle's PM trained at each context length and with each length "
        "treatment on the same pairs, split and seed; validation pairs. *plain*: the Bradley-Terry loss alone; "
        "*balance*: length-balanced pair weights (`pm train`'s default); *balance+penalty*: also the ODIN-style "
        "score-length decorrelation term.",
        "",
        "| file | principle | max length | cut | variant | accuracy | shorter chosen | prefers longer | corr "
        "| training | scoring (seq/s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in files:
        d = json.loads(f.read_text())
        principle = d["meta"]["args"]["principle"]
        for r in d["rows"]:
            ln = r["length"]
            cut = d["cut_share"].get(str(r["max_length"]))
            lines.append(
                f"| {f.name} | {principle} | {r['max_length']} | {cut:.0%} | {r['variant']} | {_a(r['pm'])} | "
                f"{_a(ln['shorter_chosen'])} | {ln['prefers_longer']} | {ln['score_length_corr']} | "
                f"{r['train_s']:.0f} s | {r['score_seqs_per_s']} |"
            )
    lines += ["", "Per data set:", "", "| file | max length | variant | data set | accuracy | shorter chosen |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for f in files:
        d = json.loads(f.read_text())
        for r in d["rows"]:
            for source, s in r["per_source"].items():
                lines.append(
                    f"| {f.name} | {r['max_length']} | {r['variant']} | {source} | {_a(s['pm'])} | "
                    f"{_a(s['length']['shorter_chosen'])} |"
                )
    return [*lines, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="The pm eval output folder (holds report.md and the JSON files).")
    args = ap.parse_args()
    report = args.folder / "report.md"
    if not report.is_file():
        raise SystemExit(f"error: {report} is missing: run `morlaif pm eval --out {args.folder}` first")
    lines: list[str] = []
    if files := sorted(args.folder.glob("length_context*.json")):
        lines += cut_table(files)
        if trained := [f for f in files if json.loads(f.read_text())["rows"]]:
            lines += length_tables(trained)
    if files := sorted(args.folder.glob("base_comparison*.json")):
        lines += base_tables(files)
    text = report.read_text().split(MARK, 1)[0].rstrip("\n")  # run twice, the tables appear once
    if lines:
        text += "\n\n" + MARK + "\n\n" + "\n".join(lines)
    report.write_text(text + "\n")
    print(f"{report}: {len(lines)} lines of study tables added")


if __name__ == "__main__":
    main()
