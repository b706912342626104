"""`morlaif pm`: train preference models into adapter packages, evaluate them, split data by prompt.

Only typer is imported at module level (fast `--help`); torch and friends load inside the commands.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from morlaif import envvars

if TYPE_CHECKING:
    from pm_server.training.length import LengthCorrection

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


def _target_modules(value: str | None) -> list[str] | str | None:
    if value is None or value == "all-linear":
        return value
    names = [x.strip() for x in value.split(",") if x.strip()]
    if not names:
        raise typer.BadParameter("all-linear or module names, e.g. query,key,value", param_hint="--target-modules")
    return names


@app.command("train")
def train(
    principle: Annotated[
        str,
        typer.Option(
            help="Principle the package is for (its name), e.g. factuality; also the principle of the --data "
            "lines and HH-RLHF files that name none."
        ),
    ],
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
    target_modules: Annotated[
        str | None,
        typer.Option(
            help="Modules that get LoRA: all-linear (attention and MLP) or names, e.g. query,key,value "
            "(default: PEFT's for the base, BERT's query and value).",
        ),
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
    length_balance: Annotated[
        bool,
        typer.Option(
            "--length-balance/--no-length-balance",
            help="Weight pairs so that, per data source, chosen-longer and chosen-shorter pairs count equally: "
            "a PM cannot win by preferring the longer reply.",
        ),
    ] = True,
    length_penalty: Annotated[
        float,
        typer.Option(
            min=0,
            help="Add this times the squared correlation of score with response length (per batch) to the loss "
            "(ODIN-style decorrelation; 0: off).",
        ),
    ] = 0.0,
    bf16: Annotated[
        bool | None,
        typer.Option(
            "--bf16/--no-bf16",
            help="bfloat16 autocast for the forward and backward passes (weights stay fp32): faster on a GPU, 1.5x "
            "on a CPU with AVX512-BF16 or AMX; about 10x slower on a CPU without them (emulated; pm train warns). "
            "Default: on where the device computes bfloat16 (a GPU that supports it, a CPU with AVX512-BF16 or "
            "AMX), off elsewhere.",
            show_default=False,
        ),
    ] = None,
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
    length_correct: Annotated[
        bool,
        typer.Option(
            "--length-correct",
            help="Then take the PM's length lean out of its served score (as `pm length-correct`): writes "
            "<version>-lc beside the package, and --publish loads that one.",
        ),
    ] = False,
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
    from pm_server.training.pairs import PairDataError, load_pairs, select_pairs
    from pm_server.training.trainer import TrainConfig, TrainError, train_pm

    if not data and store is None:
        raise _fail("give training data: --data FILE (repeatable) and/or --store URL")
    if length_correct and pool:
        raise _fail("--length-correct fits on the pairs of --principle; a --pool package has none of its own")
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
            target_modules=_target_modules(target_modules),
            full_finetune=full,
            head_only=head_only,
            margin=margin,
            length_balance=length_balance,
            length_penalty=length_penalty,
            bf16=bf16,
            val_fraction=val_fraction,
            patience=patience,
            seed=seed,
            device=device,
        )
        # a file without principles (one written for this PM) trains it; with --pool every line must name its own
        pairs, sources = load_pairs(
            data, store, judge, None if pool else [principle], default_principle=None if pool else principle
        )
        pairs = select_pairs(pairs, principle, pool=pool, limit=limit, seed=seed)
    except (TrainError, PairDataError) as e:
        raise _fail(str(e)) from None
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
    served = result.version
    if length_correct:
        served = _length_correct(
            out_root,
            principle,
            base,
            device,
            from_version=result.version,
            min_pairs=30,
            failing=f"{result.package_dir} is written, but not length-corrected: ",
        ).version
    if publish is not None:
        _publish(publish, principle, served)


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
    check: Annotated[
        list[str] | None,
        typer.Option(
            help="Pairs (file or PRINCIPLE=file) on which only the fitted reward is scored, all of them: data no "
            "package trained on, e.g. answers against refusals on held-out prompts; repeatable."
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
    fit: Annotated[
        str,
        typer.Option(
            help="How the weights serve several kinds of human preference (--human helpfulness=..., "
            "harmlessness=...): mean maximises the kinds' mean log-likelihood (each kind weighing the same), "
            "worst-kind the lowest kind's (no kind of the fit traded away; check the report's served reward "
            "on the other data sets)."
        ),
    ] = "mean",
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
    from pm_server.training.evaluation import FIT_OBJECTIVES

    if fit.replace("-", "_") not in FIT_OBJECTIVES:  # worst-kind on the command line, worst_kind in the library
        raise _fail(f"--fit {fit!r}: expected {' or '.join(o.replace('_', '-') for o in FIT_OBJECTIVES)}")
    from pm_server.training.pm_eval import EvalError, run_pm_eval

    try:
        run_pm_eval(
            data=data,
            store=store,
            judge=judge,
            human=human,
            check=check,
            adapter_root=adapter_root,
            principles=[x.strip() for x in principles.split(",") if x.strip()] if principles else None,
            single=single,
            base=base,
            validation_only=validation_only,
            fit_fraction=fit_fraction,
            fit_objective=fit.replace("-", "_"),
            out=out,
            device=device,
            dtype=dtype,
            echo=typer.echo,
        )
    except EvalError as e:
        raise _fail(str(e)) from None


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
    from pm_server.training.pairs import PairDataError, read_pairs, write_split

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
    counts = write_split(pairs, out_dir, named, salt=salt)
    typer.echo(", ".join(f"{n}: {c} pairs -> {out_dir / (n + '.jsonl')}" for n, c in counts.items()))


@app.command("length-correct")
def length_correct(
    principle: Annotated[str, typer.Argument(help="The principle whose package is corrected.")],
    adapter_root: Annotated[Path, typer.Option(help="Where the packages are.")] = Path("var/adapters"),
    version: Annotated[
        str | None, typer.Option(help="Version of the corrected package (default: the old version + '-lc').")
    ] = None,
    from_version: Annotated[
        str | None, typer.Option(help="The package version to correct (default: the newest).")
    ] = None,
    base: Annotated[str, typer.Option(help="Base model the package was trained on.")] = "minilm",
    min_pairs: Annotated[
        int, typer.Option(min=1, help="Fewest training pairs needed where the better reply is shorter, and longer.")
    ] = 30,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
) -> None:
    """Take a PM's length lean out of the score it serves, as a new package version (same weights).

    Re-reads the package's training data (from its provenance; the files must be unchanged), scores its training
    and validation pairs, and fits one coefficient on the training pairs: the served score becomes
    (raw - coef x ln(1 + response characters) - mean) / std, where coef makes the PM as accurate where the better
    reply is the shorter one as where it is the longer one. Prints both accuracies before and after, on training
    and on validation pairs; the new version is what a server loading the newest version serves.

        morlaif pm length-correct helpfulness --adapter-root var/adapters

    A package that is already corrected is refused: refit from its source with --from-version.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _length_correct(
        adapter_root, principle, base, device, version=version, from_version=from_version, min_pairs=min_pairs
    )


def _length_correct(
    root: Path,
    principle: str,
    base: str,
    device: str,
    *,
    min_pairs: int,
    version: str | None = None,
    from_version: str | None = None,
    failing: str = "",
) -> LengthCorrection:
    """Run `length_correct_package` and print what it changed; exit 2 with `failing` + its message when it cannot."""
    from pm_server.training.evaluation import fmt
    from pm_server.training.length import LengthCorrectionError, length_correct_package

    try:
        res = length_correct_package(
            root,
            principle,
            base=base,
            device=device,
            version=version,
            from_version=from_version,
            min_pairs=min_pairs,
            echo=typer.echo,
        )
    except LengthCorrectionError as e:
        raise _fail(f"{failing}{e}") from None
    typer.echo(f"length coefficient {res.coef:+.4f} (raw score per unit of ln(1 + characters))")
    for part, d in res.accuracy.items():
        for when, row in d.items():
            typer.echo(
                f"  {part:10s} {when:6s}  all {fmt(row['all'])}  better shorter {fmt(row['shorter_better'])}  "
                f"better longer {fmt(row['longer_better'])}"
            )
    typer.echo(f"wrote {res.path}")
    return res


@app.command("refusal-pairs")
def refusal_pairs_command(
    data: Annotated[
        list[str], typer.Argument(help="Pair JSONL or HH-RLHF files, as PATH or PRINCIPLE=PATH, read in order.")
    ],
    prefer: Annotated[
        str,
        typer.Option(
            help="answer: the prompts are fine to answer, their better reply beats a stock refusal; refusal: they are "
            "harmful requests, a stock refusal beats their worse reply."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Pair JSONL to write (.jsonl).")],
    principle: Annotated[str, typer.Option(help="The principle the pairs are labelled for.")] = "harmlessness",
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many pairs (one per prompt).")] = None,
) -> None:
    """Stock refusals against real replies, one pair per prompt: data that teaches a PM when refusing is right.

    A PM trained on red-team preferences alone learns that an apology always scores well. Pairs from prompts that
    are fine to answer (--prefer answer) and from harmful ones (--prefer refusal), with the same refusals on both
    sides, make the prompt the only thing that says whether the refusal wins:

        morlaif pm refusal-pairs helpful-train.jsonl --prefer answer --out var/refusals/answer.jsonl --limit 800
        morlaif pm refusal-pairs harmless-train.jsonl --prefer refusal --out var/refusals/refuse.jsonl --limit 800
        morlaif pm train --principle harmlessness --data harmless-train.jsonl --data var/refusals/answer.jsonl \\
            --data var/refusals/refuse.jsonl
    """
    from pm_server.training.pairs import PairDataError, read_pairs, write_split
    from pm_server.training.refusals import refusal_pairs

    if prefer not in ("answer", "refusal"):
        raise typer.BadParameter(f"{prefer!r}: expected answer or refusal", param_hint="--prefer")
    if out.suffix != ".jsonl":
        raise typer.BadParameter(f"{out}: the output is pair JSONL, name it *.jsonl", param_hint="--out")
    from morlaif.principles import PRINCIPLE_NAME_RE

    if not PRINCIPLE_NAME_RE.match(principle):
        raise typer.BadParameter(f"{principle!r} is not a principle name", param_hint="--principle")
    inputs = {
        Path(spec.partition("=")[2] if "=" in spec and not Path(spec).exists() else spec).resolve() for spec in data
    }
    if out.resolve() in inputs:
        raise typer.BadParameter(f"{out} is also an input: it would be overwritten", param_hint="--out")
    try:
        pairs = [p for spec in data for p in read_pairs(spec, default_principle=principle)]
    except PairDataError as e:
        raise _fail(str(e)) from None
    made = refusal_pairs(pairs, prefer="answer" if prefer == "answer" else "refusal", principle=principle, limit=limit)
    if not made:
        raise _fail(f"{', '.join(data)}: no prompt with a reply that is not itself a refusal: no pairs written")
    write_split(made, out.parent, [(out.stem, 1.0)], salt="refusal-pairs")
    typer.echo(f"{len(made)} pairs ({prefer} preferred, from {len({p.prompt for p in pairs})} prompts) -> {out}")
