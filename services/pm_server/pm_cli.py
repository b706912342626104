"""`morlaif pm`: train preference models into adapter packages, evaluate them, split data by prompt.

Only typer is imported at module level (fast `--help`); torch and friends load inside the commands.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from morlaif import envvars

app = typer.Typer(
    name="pm",
    help="Train and evaluate per-principle preference models (adapter packages for the PM server).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DataOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--data",
        help="Pair JSONL or HH-RLHF file, as PATH or PRINCIPLE=PATH (the principle of its pairs); repeatable.",
    ),
]
StoreOpt = Annotated[
    str | None, typer.Option("--store", envvar="MORLAIF_STORE_URL", help="Label store URL (labels as training data).")
]


def _fail(msg: str, code: int = 2) -> typer.Exit:
    """Print `msg` (once in a data-parallel `pm train`, where every rank fails alike) and exit with `code`."""
    from morlaif.distributed import error_once

    error_once(msg)
    return typer.Exit(code)


def _layers(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter("a comma-separated list of layer indices, e.g. 3,4,5", param_hint="--layers") from None


def _load_pairs(data: list[str] | None, store: str | None, judge: str | None, principles: list[str] | None) -> Any:
    """All pairs of the data files, plus the store's labels of `principles`; and their provenance."""
    from pm_server.training.pairs import PairDataError, file_sha256, parse_spec, read_pairs, store_pairs

    pairs, sources = [], []
    given: dict[tuple[Path, str | None], str] = {}
    for raw in data or []:
        spec = parse_spec(raw)
        key = (spec.path.resolve(), spec.principle)
        if key in given:  # its pairs would count twice, in training and in every accuracy
            raise PairDataError(f"--data {raw} is given twice (first as {given[key]})")
        given[key] = raw
        got = read_pairs(spec)
        pairs += got
        sources.append(
            {"file": str(spec.path), "principle": spec.principle, "sha256": file_sha256(spec.path), "pairs": len(got)}
        )
    if store is not None:
        from morlaif.store import StoreUnavailable, open_store
        from morlaif.store.db import display_url

        shown = display_url(store)
        try:
            if principles is None:  # pooled: every principle the store has labels for
                with open_store(store) as st:
                    principles = sorted(st.status(judge))
            for name in principles:
                got = store_pairs(store, name, judge=judge)
                pairs += got
                sources.append({"store": shown, "principle": name, "judge": judge, "pairs": len(got)})
        except StoreUnavailable as e:  # a bad URL or an unreachable server: its message hides the password
            raise PairDataError(str(e)) from e
        except Exception as e:  # a failed query: say which store, without the password
            raise PairDataError(
                f"cannot read the label store {shown}: {type(e).__name__}: {e}".replace(store, shown)
            ) from e
    return pairs, sources


@app.command("train")
def train(
    principle: Annotated[str, typer.Option(help="Principle the package is for (its name), e.g. factuality.")],
    data: DataOpt = None,
    store: StoreOpt = None,
    judge: Annotated[str | None, typer.Option(help="With --store: only this judge's labels.")] = None,
    pool: Annotated[
        bool,
        typer.Option("--pool", help="Train on every pair of the data, whatever its principle (single-PM baseline)."),
    ] = False,
    out_root: Annotated[Path, typer.Option(help="Adapter root to write <principle>/<version>/ into.")] = Path(
        "var/adapters"
    ),
    version: Annotated[str | None, typer.Option(help="Package version (default: UTC date-time, sortable).")] = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="Checkpoints for resuming (default var/runs/<principle>).")
    ] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Discard a checkpoint in the run directory.")] = False,
    base: Annotated[
        str, typer.Option(help="Base model: minilm, a path or a hub id (the PM server's base).")
    ] = "minilm",
    max_length: Annotated[int, typer.Option(help="Most tokens per (prompt, response).")] = 256,
    epochs: Annotated[int, typer.Option(min=1)] = 3,
    batch_size: Annotated[int, typer.Option(min=1, help="Pairs per step.")] = 16,
    lr: Annotated[
        float | None,
        typer.Option(help="Peak learning rate (default 2e-3 with LoRA, 1e-4 with --full, 1e-2 with --head-only)."),
    ] = None,
    lora_r: Annotated[int, typer.Option(min=1)] = 8,
    lora_alpha: Annotated[int, typer.Option(min=1)] = 16,
    lora_dropout: Annotated[float, typer.Option(min=0, max=0.9, help="Dropout on LoRA's input while training.")] = 0.05,
    layers: Annotated[
        str | None, typer.Option(help="Layers that get LoRA, e.g. 3,4,5 (default: the upper half).")
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="Full fine-tuning: writes a model folder instead of an adapter package.")
    ] = False,
    head_only: Annotated[
        bool,
        typer.Option(
            "--head-only",
            help="Train the score head alone on the frozen base (a head package: every head-only principle "
            "of an item costs the server one shared forward).",
        ),
    ] = False,
    margin: Annotated[float, typer.Option(min=0, help="Bradley-Terry margin added to every pair.")] = 0.0,
    val_fraction: Annotated[float, typer.Option(help="Share of prompts held out for validation.")] = 0.15,
    patience: Annotated[int, typer.Option(min=0, help="Epochs without improvement before stopping.")] = 1,
    seed: Annotated[int, typer.Option()] = 0,
    limit: Annotated[int | None, typer.Option(min=1, help="Use at most this many pairs (a seeded sample).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    publish: Annotated[
        str | None,
        typer.Option(help="PM server URL to load the new version on (admin key from MORLAIF_ADMIN_KEY)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Train one preference model (LoRA + score head, soft Bradley-Terry) and write its adapter package.

    Pairs come from files (--data) and/or the label store (--store: the labels of --principle). Without
    --pool only pairs of --principle are used. Ctrl-C or SIGTERM finishes the step in hand, saves a checkpoint
    in the run folder and exits with 130 or 143 (a second signal stops at once); interrupted runs resume when the
    same command is run again.

        morlaif pm train --principle factuality --data ../shared/data/factuality_truthfulqa.jsonl
        morlaif pm train --principle single_pm --pool --data a.jsonl --data harmlessness=hh.jsonl.gz

    Data parallel on several GPUs or nodes (--batch-size is then the global batch; docs/distributed.md):

        accelerate launch --multi_gpu --num_processes 8 -m morlaif pm train --principle factuality ...
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from pm_server.training.pairs import PairDataError
    from pm_server.training.trainer import TrainConfig, TrainError, train_pm

    if not data and store is None:
        raise _fail("give training data: --data FILE (repeatable) and/or --store URL")
    try:
        config = TrainConfig(
            base=base,
            max_length=max_length,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=lr if lr is not None else (1e-4 if full else 1e-2 if head_only else 2e-3),
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            layers_to_transform=_layers(layers),
            full_finetune=full,
            head_only=head_only,
            margin=margin,
            val_fraction=val_fraction,
            patience=patience,
            seed=seed,
            device=device,
        )
        pairs, sources = _load_pairs(data, store, judge, None if pool else [principle])
    except (TrainError, PairDataError) as e:
        raise _fail(str(e)) from None
    if not pool:
        found = sorted({p.principle for p in pairs})
        pairs = [p for p in pairs if p.principle == principle]
        if not pairs:
            raise _fail(
                f"no pairs for principle {principle!r} in the data (it has: {', '.join(found) or 'none'}); "
                "use --pool to train on all of them"
            )
    if limit is not None and len(pairs) > limit:
        import random

        pairs = random.Random(seed).sample(pairs, limit)
    if quiet:
        from morlaif.runs import quiet_libraries

        quiet_libraries()
    try:
        result = train_pm(
            pairs,
            principle=principle,
            config=config,
            out_root=out_root,
            run_dir=run_dir or Path("var/runs") / principle,
            version=version,
            data_sources=sources,
            fresh=fresh,
            progress=not quiet,
        )
    except TrainError as e:
        raise _fail(str(e)) from None
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (runs.Stopped): 130 or 143
        from morlaif.runs import interrupt_exit_code

        code = interrupt_exit_code(e)
        again = "the same command again without --fresh" if fresh else "the same command again"
        raise _fail(f"interrupted; the checkpoint is saved: run {again} to resume", code) from None
    if not result.main:
        return  # the main process reports and publishes
    m = result.metrics
    lo, hi = m["val_accuracy_ci95"]
    typer.echo(
        f"wrote {result.package_dir}: validation accuracy {m['val_accuracy']:.3f} [{lo:.3f}, {hi:.3f}] "
        f"on {m['val_pairs']} pairs, best epoch {m['best_epoch']}, {m['train_seconds']:.0f} s"
    )
    if publish is not None:
        _publish(publish, principle, result.version)


def _publish(url: str, principle: str, version: str) -> None:
    from morlaif.client import MorlaifClient
    from morlaif.errors import ClientError

    key = os.environ.get(envvars.ADMIN_KEY)
    try:
        with MorlaifClient(url, api_key=key) as client:
            action = client.load_adapter(principle, version=version)
    except ClientError as e:
        raise _fail(
            f"the package is written, but {url} did not load it: {e} "
            "(is the package inside the server's adapter root?)",
            1,
        ) from None
    prev = f" (was {action.previous_version})" if action.previous_version else ""
    typer.echo(f"{url} now serves {principle} {version}{prev}")


@app.command("eval")
def evaluate(
    data: DataOpt = None,
    store: StoreOpt = None,
    judge: Annotated[str | None, typer.Option(help="With --store: only this judge's labels.")] = None,
    human: Annotated[
        list[str] | None,
        typer.Option(
            help="Human preference pairs (file or PRINCIPLE=file) for the multi-objective accuracy; repeatable."
        ),
    ] = None,
    adapter_root: Annotated[Path, typer.Option(help="Where the packages are.")] = Path("var/adapters"),
    principles: Annotated[
        str | None, typer.Option(help="Comma-separated packages to evaluate (default: all in the root but --single).")
    ] = None,
    single: Annotated[str | None, typer.Option(help="The single-PM baseline package, e.g. single_pm.")] = None,
    base: Annotated[str, typer.Option(help="Base model the packages were trained on.")] = "minilm",
    validation_only: Annotated[
        bool,
        typer.Option("--validation-only", help="Keep only the prompts each package held out in training."),
    ] = False,
    fit_fraction: Annotated[float, typer.Option(help="Share of human prompts used to fit the weights.")] = 0.5,
    out: Annotated[Path, typer.Option(help="Folder for report.md, eval.json, the PNGs and weights.json.")] = Path(
        "var/eval"
    ),
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    dtype: Annotated[
        str,
        typer.Option(
            help="float32 (scores as trained), bfloat16 or auto: with the server's --dtype, the accuracy it gives."
        ),
    ] = "float32",
) -> None:
    """Accuracy of each principle's PM (with baselines) and of scalarized PMs on human preferences.

        morlaif pm eval --data ../shared/data/factuality_truthfulqa.jsonl --validation-only \\
            --human harmlessness=hh-eval.jsonl --single single_pm --out var/eval
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from pm_server.model.base import DTYPES

    if dtype not in DTYPES:
        raise _fail(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    from pm_server.model.base import load_base
    from pm_server.model.package import PackageError, find_packages
    from pm_server.training.evaluation import (
        Accuracy,
        PackageScorer,
        agreement_matrix,
        fmt,
        labelled_margins,
        multi_objective,
        principle_report,
        write_scalarizer_file,
    )
    from pm_server.training.pairs import Pair, PairDataError, prompt_bucket
    from pm_server.training.report import write_figures, write_markdown

    found = [n for n, _ in find_packages(adapter_root)]
    names = [x.strip() for x in principles.split(",") if x.strip()] if principles else [n for n in found if n != single]
    missing = [n for n in [*names, *([single] if single else [])] if n not in found]
    if missing:
        raise _fail(f"no package for {', '.join(missing)} under {adapter_root} (found: {', '.join(found) or 'none'})")
    if not names:
        raise _fail(f"no packages to evaluate under {adapter_root}")
    try:
        pairs, sources = _load_pairs(data, store, judge, names)
        human_pairs, human_sources = _load_pairs(human, None, None, None)
    except PairDataError as e:
        raise _fail(str(e)) from None
    try:
        b = load_base(base, device=device, dtype=dtype)
    except (OSError, ValueError) as e:
        raise _fail(f"cannot load base model {base!r}: {e}") from None
    scorer = PackageScorer(b, adapter_root)
    try:
        for n in [*names, *([single] if single else [])]:
            scorer.load(n)
    except PackageError as e:
        raise _fail(str(e)) from None

    def held_out(name: str, part: list[Pair]) -> list[Pair]:
        split = scorer.packages[name].manifest.provenance.get("split") or {}
        if not validation_only:
            return part
        if "val_fraction" not in split:
            raise _fail(f"package {name} records no validation split; drop --validation-only")
        return [p for p in part if prompt_bucket(p.prompt, split.get("salt", "")) < split["val_fraction"]]

    result: dict[str, Any] = {
        "base": base,
        "base_config_hash": b.config_hash,
        "adapter_root": str(adapter_root),
        "data": [json.dumps(s) for s in [*sources, *human_sources]],
        "validation_only": validation_only,
        "per_principle": [],
    }
    for n in names:
        own = held_out(n, [p for p in pairs if p.principle == n])
        if own:
            r = principle_report(scorer, n, own)
            if single is not None:  # same prompts held out (same split salt): a fair per-principle comparison
                r["single_pm"] = Accuracy.of(labelled_margins(scorer.pair_scores(single, own), own)).to_dict()
            result["per_principle"].append(r)
            typer.echo(f"{n}: PM {fmt(r['pm'])}  longer {fmt(r['longer_wins'])}  untrained {fmt(r['untrained_head'])}")
    if human_pairs:
        try:
            mo = multi_objective(scorer, names, human_pairs, fit_fraction=fit_fraction, single_pm=single)
        except ValueError as e:
            raise _fail(str(e)) from None
        result["multi_objective"] = mo.to_dict()
        agree_names, matrix = agreement_matrix(mo.margins)  # the margins multi_objective already scored
        result["agreement"] = {"names": agree_names, "matrix": matrix, "pairs": len(human_pairs)}
        weights_file = out / "weights.json"
        write_scalarizer_file(weights_file, mo.weights)
        result["scalarizer_file"] = str(weights_file)
        best = max(mo.per_scalarizer.items(), key=lambda kv: kv[1].value)
        typer.echo(f"human preferences ({mo.test_pairs} test pairs): best scalarizer {best[0]} {fmt(best[1])}")
        if mo.single_pm is not None:
            typer.echo(f"single PM {single}: {fmt(mo.single_pm)}")
        typer.echo(f"fitted weights: {json.dumps(mo.weights)} -> {weights_file}")
    elif result["per_principle"]:
        # without human pairs, the agreement heatmap is over all evaluated pairs
        allp = [p for p in pairs if p.principle in names]
        margins = {n: labelled_margins(scorer.pair_scores(n, allp), allp) for n in names}
        agree_names, matrix = agreement_matrix(margins)
        result["agreement"] = {"names": agree_names, "matrix": matrix, "pairs": len(allp)}
    if not result["per_principle"] and not human_pairs:
        raise _fail("nothing to evaluate: give --data with pairs of the packages' principles, --store, or --human")
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    figures = write_figures(result, out)
    report = write_markdown(result, out, figures)
    typer.echo(f"report: {report}")


@app.command("split")
def split(
    data: Annotated[str, typer.Argument(help="Pair JSONL or HH-RLHF file, as PATH or PRINCIPLE=PATH.")],
    out_dir: Annotated[Path, typer.Option(help="Folder for <name>.jsonl per part.")],
    parts: Annotated[
        str, typer.Option(help="Named fractions of the prompts, e.g. train=0.6,eval=0.4.")
    ] = "train=0.8,eval=0.2",
    salt: Annotated[str, typer.Option(help="Changes which prompts fall where.")] = "split",
) -> None:
    """Split preference pairs into parts by prompt (all pairs of one prompt in one part), as pair JSONL.

    HH-RLHF transcripts come out as pairs with their prompt separated. The split depends only on each
    prompt's text and the salt, so it is the same on every machine and for every file order.
    """
    from pm_server.training.pairs import PairDataError, prompt_bucket, read_pairs

    named: list[tuple[str, float]] = []
    for item in parts.split(","):
        name, _, frac = item.partition("=")
        try:
            named.append((name.strip(), float(frac)))
        except ValueError:
            raise typer.BadParameter(f"{item!r} is not NAME=FRACTION", param_hint="--parts") from None
    total = sum(f for _, f in named)
    if abs(total - 1.0) > 1e-6 or any(f <= 0 or not n for n, f in named):
        raise typer.BadParameter(f"fractions must be > 0 and sum to 1 (got {total:g})", param_hint="--parts")
    try:
        pairs = read_pairs(data)
    except PairDataError as e:
        raise _fail(str(e)) from None
    out_dir.mkdir(parents=True, exist_ok=True)
    handles = {n: (out_dir / f"{n}.jsonl").open("w", encoding="utf-8") for n, _ in named}
    counts = dict.fromkeys(handles, 0)
    try:
        for p in pairs:
            u, acc = prompt_bucket(p.prompt, salt), 0.0
            for n, f in named:
                acc += f
                if u < acc or n == named[-1][0]:
                    break
            rec = {
                "prompt": p.prompt,
                "chosen": p.chosen,
                "rejected": p.rejected,
                "principle": p.principle,
                "source": p.source,
            }
            if p.p < 1.0:
                rec["p"] = p.p
            handles[n].write(json.dumps(rec, ensure_ascii=False) + "\n")
            counts[n] += 1
    finally:
        for h in handles.values():
            h.close()
    typer.echo(", ".join(f"{n}: {c} pairs -> {out_dir / (n + '.jsonl')}" for n, c in counts.items()))
