"""`morlaif ppo`: train a policy with PPO against a PM server, print its config, plot a run.

Only typer is imported at module level (fast `--help`); torch and friends load inside the commands.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="ppo",
    help="PPO on a causal LM with scalarized multi-objective rewards from a (remote) PM server.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="MORLAIF_PPO_CONFIG",
        help="YAML run configuration (see `morlaif ppo config`); defaults otherwise. Under Docker Compose, "
        "MORLAIF_PPO_CONFIG in .env names it (e.g. /data/ppo.yaml).",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override one key, e.g. --set ppo.batch_size=8 (value parsed as YAML); repeatable."),
]


def _fail(msg: str, code: int = 2, *, every_process: bool = False) -> typer.Exit:
    """Print `msg` (once in a data-parallel run, where every rank fails alike, unless `every_process`)."""
    from morlaif.distributed import error_once

    error_once(msg, every_process=every_process)
    return typer.Exit(code)


def _load(config: Path | None, sets: list[str] | None, shortcuts: dict[str, object]):  # -> TrainConfig
    from policy_trainer.config import ConfigError, load_config

    overrides = [f"{k}={v}" for k, v in shortcuts.items() if v is not None] + list(sets or [])
    try:
        return load_config(config, overrides=overrides)
    except ConfigError as e:
        raise _fail(str(e)) from None


@app.command("config")
def config_cmd(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the run configuration as YAML, every key with its documentation: the defaults are MORLAIF's.

    morlaif ppo config > ppo.yaml   # edit, then: morlaif ppo train --config ppo.yaml
    """
    from policy_trainer.config import default_yaml

    typer.echo(default_yaml(_load(config, set_, {})))


@app.command("train")
def train_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    url: Annotated[str | None, typer.Option(help="PM server URL (reward.url).")] = None,
    model: Annotated[
        str | None, typer.Option(help="Policy: smollm2, a folder or a hub id (model.name_or_path).")
    ] = None,
    prompts: Annotated[str | None, typer.Option(help="Prompt file (data.prompts).")] = None,
    weights_file: Annotated[
        str | None, typer.Option(help="Scalarizer and weights from a JSON file, e.g. adapters/weights.json.")
    ] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="PPO steps (run.steps).")] = None,
    out: Annotated[str | None, typer.Option(help="Run folder (run.out_dir).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    heartbeat: Annotated[
        Path | None,
        typer.Option(help="File touched at the start and after every step (a container health check reads its age)."),
    ] = None,
) -> None:
    """Train a policy with PPO; rerun the same command to resume the run where it stopped.

    Rewards come from the PM server only (its key from the variable reward.api_key_env, MORLAIF_API_KEY by
    default). Each step logs the scalarized reward, each principle's score, KL, beta, entropy, clip
    fraction, value loss, approximate KL and the time spent waiting for rewards to metrics.jsonl and
    TensorBoard (out_dir/tb). When the PM server stays down past the retries, the run saves a checkpoint and
    exits with status 3. Ctrl-C or SIGTERM (docker stop, Kubernetes) finishes the current step, saves a
    checkpoint and exits with 130 or 143. Example:

        morlaif ppo train --url http://127.0.0.1:8000 --weights-file adapters/weights.json --steps 20 --out runs/demo

    Data parallel on several GPUs (ppo.batch_size and ppo.mini_batch_size are then global; only rank 0
    writes; a run saved with N processes resumes with M; docs/distributed.md):

        accelerate launch --config_file configs/accelerate/ddp.yaml -m morlaif ppo train -c ppo.yaml

    Several nodes: the same on each, with --num_machines, --machine_rank and --main_process_ip (rank 0's
    address); on Kubernetes, k8s/overlays/distributed.
    """
    from morlaif.errors import MorlaifError
    from morlaif.runs import quiet_libraries
    from policy_trainer.train import RewardUnavailableError, train

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    shortcuts = {
        "reward.url": url,
        "model.name_or_path": model,
        "data.prompts": prompts,
        "reward.weights_file": weights_file,
        "run.steps": steps,
        "run.out_dir": out,
    }
    cfg = _load(config, set_, shortcuts)
    if cfg.ppo.lr_schedule == "linear" and cfg.ppo.total_steps == 0:
        cfg.ppo.total_steps = cfg.run.steps
    if quiet:
        quiet_libraries()
    on_step = None
    if heartbeat is not None:
        heartbeat.parent.mkdir(parents=True, exist_ok=True)
        heartbeat.touch()

        def on_step(step: int, stats: dict[str, float]) -> None:
            heartbeat.touch()

    try:
        result = train(cfg, progress_bar=not quiet, on_step=on_step)
    except RewardUnavailableError as e:
        raise _fail(str(e), 3) from None
    except (MorlaifError, ValueError, FileNotFoundError) as e:
        raise _fail(str(e)) from None
    except OSError as e:  # a run folder it cannot write (a volume owned by another user), a full disk
        raise _fail(f"{e.strerror or e}: {e.filename or cfg.run.out_dir}", every_process=True) from None
    except KeyboardInterrupt as e:  # a second Ctrl-C or SIGTERM: stopped mid-step, the last checkpoint stands
        from morlaif.runs import interrupt_exit_code

        typer.echo(
            f"stopped at once (a second signal); a rerun resumes from the last checkpoint in {cfg.run.out_dir}",
            err=True,
        )
        raise typer.Exit(interrupt_exit_code(e)) from None
    if not result.main:
        if result.exit_code:
            from morlaif.distributed import let_main_report

            let_main_report()
        raise typer.Exit(result.exit_code)
    if result.interrupted:
        typer.echo(
            f"stopped at step {result.steps_done}; checkpoint in {result.out_dir}: run the same command again to "
            "resume",
            err=True,
        )
        raise typer.Exit(result.exit_code)
    last = result.history[-1] if result.history else {}
    typer.echo(
        f"done: {result.steps_done} steps in {result.out_dir} (policy in {result.out_dir / 'policy'}); "
        f"last reward {last.get('reward', float('nan')):.4f}, KL {last.get('kl', float('nan')):.3f}",
        err=True,
    )


@app.command("plot")
def plot_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A `morlaif ppo train` run folder (holds metrics.jsonl).")],
    out: Annotated[Path | None, typer.Option(help="PNG to write (default: RUN_DIR/rewards.png).")] = None,
    smooth: Annotated[int, typer.Option(min=1, help="Moving-average window of the reward curves, in steps.")] = 5,
) -> None:
    """Draw the per-principle reward curves, the scalarized reward, KL and beta of a run as a PNG."""
    from policy_trainer.plot import PlotError, plot_run

    try:
        path = plot_run(run_dir, out, smooth=smooth)
    except PlotError as e:
        raise _fail(str(e)) from None
    typer.echo(str(path))
