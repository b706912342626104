"""`morlaif sample` and `morlaif sft`: the target model's side of the pipeline (only typer at module level)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from morlaif import envvars
from policy_trainer.cli import _fail


def _prompts(source: str) -> list[str]:
    """Prompts from a file, or from the hub as ``hf:<dataset>[:<split>]`` (HH-RLHF format)."""
    if source.startswith("hf:"):
        from morlaif.store.importers import read_hh_hub

        dataset, _, split = source[3:].partition(":")
        seen: dict[str, None] = {}
        for rec in read_hh_hub(dataset, principle="-", split=split or "test"):
            seen.setdefault(rec.prompt, None)
        return list(seen)
    from policy_trainer.data import read_prompts

    return read_prompts(source)


def sample(
    prompts: Annotated[
        str,
        typer.Argument(
            help='Prompts: HH-RLHF transcripts (.jsonl[.gz]), a JSONL of {"prompt"} or chat {"messages"}, or '
            "hf:<dataset id>[:split] (needs the network and `pip install 'morlaif\\[hub]'`)."
        ),
    ],
    k: Annotated[int, typer.Option("-k", "--k", min=2, help="Responses per prompt.")] = 4,
    pairs: Annotated[
        str, typer.Option(help="Comparisons per prompt: `all` pairs of its distinct responses, or a number (random).")
    ] = "all",
    model: Annotated[
        str,
        typer.Option(
            help="In-process target model: smollm2 (the packaged SmolLM2-135M-Instruct), a `morlaif sft` or "
            "`morlaif ppo train` output folder, a model folder or a hub id. Ignored with --endpoint."
        ),
    ] = "smollm2",
    endpoint: Annotated[
        str | None,
        typer.Option(
            envvar=envvars.SAMPLE_BASE_URL,
            help="An OpenAI-compatible endpoint to sample from instead (e.g. http://vllm:8000/v1); the key comes "
            f"from {envvars.SAMPLE_API_KEY}. Env: {envvars.SAMPLE_BASE_URL}.",
        ),
    ] = None,
    endpoint_model: Annotated[str | None, typer.Option(help="The model name at --endpoint.")] = None,
    api: Annotated[str, typer.Option(help="Endpoint API: chat (messages) or completions (raw text).")] = "chat",
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Endpoint requests in flight.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Most tokens per response.")] = 64,
    max_prompt_tokens: Annotated[
        int, typer.Option(min=8, help="Longer prompts lose their beginning (in-process).")
    ] = 256,
    temperature: Annotated[
        float, typer.Option(min=0.0, help="Sampling temperature (> 0 for k different answers).")
    ] = 0.8,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Nucleus sampling; 1: off.")] = 1.0,
    chat_template: Annotated[
        bool, typer.Option(help="Show the in-process model its chat template (HH transcripts become messages).")
    ] = True,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per generation batch (and per store write).")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of sampling and of the random pairs.")] = 0,
    limit: Annotated[int | None, typer.Option(min=1, help="Sample at most this many new prompts.")] = None,
    source: Annotated[
        str | None,
        typer.Option(
            help="Source name of the responses and comparisons (default sample:<model>); a rerun with the "
            "same source skips prompts it has done."
        ),
    ] = None,
    store: Annotated[
        str, typer.Option(envvar="MORLAIF_STORE_URL", help="Label store URL. Env: MORLAIF_STORE_URL.")
    ] = "sqlite:///var/labels.db",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (in-process model).")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Sample K responses per prompt from a target model and store them, with comparisons among them, in the
    label store, ready for `morlaif feedback enqueue --source SOURCE`.

    Every response records its model, backend and sampling settings. Work is written a batch at a time;
    Ctrl-C or SIGTERM stores the batch in hand and stops (exit 130 or 143); a crash loses at most the batch in
    progress; the same command resumes. Examples:

        morlaif sample ../shared/data/hh-rlhf/helpful-base-dev.jsonl.gz -k 4 --limit 100
        morlaif sample prompts.jsonl --endpoint http://vllm:8000/v1 --endpoint-model my-sft -k 8 --pairs 6
    """
    from morlaif.errors import MorlaifError
    from morlaif.runs import StopRequest, defer_stop_signals, interrupt_exit_code, progress, quiet_libraries
    from policy_trainer.generate import SamplingConfig
    from policy_trainer.sample import EndpointGenerator, LocalGenerator, sample_to_store

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if quiet:
        quiet_libraries()
    if pairs != "all" and not (pairs.isdigit() and int(pairs) >= 1):
        raise typer.BadParameter(f"{pairs!r}: give `all` or a number >= 1", param_hint="--pairs")
    n_pairs = None if pairs == "all" else int(pairs)
    if api not in ("chat", "completions"):
        raise typer.BadParameter(f"{api!r}: chat or completions", param_hint="--api")
    if endpoint is not None and not endpoint_model:
        raise typer.BadParameter("--endpoint needs --endpoint-model (the model name at the endpoint)")
    try:
        texts = _prompts(prompts)
    except (MorlaifError, OSError) as e:
        raise _fail(str(e)) from None
    cfg = SamplingConfig(
        max_new_tokens=max_new_tokens,
        max_prompt_tokens=max_prompt_tokens,
        temperature=temperature,
        top_p=top_p,
        batch_size=batch_size * k,
        seed=seed,
        chat_template=chat_template,
    )
    if endpoint is not None:
        import openai

        assert endpoint_model is not None
        client = openai.OpenAI(
            base_url=endpoint, api_key=os.environ.get(envvars.SAMPLE_API_KEY) or "EMPTY", max_retries=6, timeout=120
        )
        generator = EndpointGenerator(client, endpoint_model, cfg, api=api, concurrency=concurrency, base_url=endpoint)
        name = endpoint_model
    else:
        from policy_trainer.train import load_trained_policy

        try:
            lm, tokenizer = load_trained_policy(model, device=device)
        except OSError as e:
            raise _fail(f"cannot load the model {model!r}: {e}") from None
        generator = LocalGenerator(lm, tokenizer, cfg, model_id=model)
        name = model
    source = source or f"sample:{name}"

    from morlaif.store import StoreUnavailable, open_store

    try:
        s = open_store(store)
    except StoreUnavailable as e:
        raise _fail(str(e)) from None
    bar = progress(0, 0, "sampling", not quiet, unit="prompt")

    def start(n: int) -> None:
        bar.total = n
        bar.refresh()

    stop = StopRequest()  # Ctrl-C or SIGTERM: the batch in hand is stored, then the command stops
    try:
        with defer_stop_signals(stop):
            stats = sample_to_store(
                s,
                texts,
                generator,
                k=k,
                source=source,
                pairs=n_pairs,
                seed=seed,
                batch_prompts=batch_size,
                limit=limit,
                on_start=start,
                on_batch=bar.update,
                should_stop=stop.is_set,
            )
    except KeyboardInterrupt as e:  # a second signal: the batch in hand is lost, the stored ones are kept
        bar.close()
        typer.echo("interrupted: the batches written so far are kept; run the same command to go on", err=True)
        raise typer.Exit(interrupt_exit_code(e)) from None
    except Exception as e:  # an endpoint that keeps failing, a model that cannot generate: say what, keep the rest
        bar.close()
        raise _fail(
            f"sampling stopped ({type(e).__name__}: {e}); what was written is kept, rerun to resume", 1
        ) from None
    finally:
        s.close()
    bar.close()
    if stop.is_set():
        typer.echo(
            f"stopped after {stats.prompts} prompts: the batches written so far are kept; run the same command to "
            "go on",
            err=True,
        )
        raise typer.Exit(stop.exit_code)
    typer.echo(
        f"sampled {stats.prompts} prompts ({stats.skipped} done before) x {k}: {stats.responses} new responses, "
        f"{stats.comparisons} new comparisons, source {source!r}\n"
        f"next: morlaif feedback enqueue --source {source!r} --principles helpfulness,harmlessness --judge local"
    )


def sft(
    data: Annotated[
        list[str],
        typer.Argument(
            help='Data files: HH-RLHF transcripts, {"prompt", "completion"} (what `morlaif score --condition` '
            'writes) or {"prompt", "response"}, preference pairs (the chosen response), or chat {"messages"}.'
        ),
    ],
    model: Annotated[str, typer.Option(help="smollm2 (the packaged SmolLM2-135M-Instruct), a folder or a hub id.")] = (
        "smollm2"
    ),
    out: Annotated[Path, typer.Option(help="Output folder: policy/, checkpoints/, sft.json.")] = Path("runs/sft"),
    lora: Annotated[
        bool, typer.Option(help="Train a LoRA adapter (all linear layers) instead of every weight.")
    ] = True,
    lora_r: Annotated[int, typer.Option(min=1, help="LoRA rank.")] = 16,
    merge: Annotated[bool, typer.Option(help="Save the LoRA merged into a full model (what ppo and sample load).")] = (
        True
    ),
    epochs: Annotated[float, typer.Option(min=0.01, help="Passes over the data.")] = 1.0,
    learning_rate: Annotated[float, typer.Option(min=0.0, help="Peak learning rate.")] = 2e-4,
    batch_size: Annotated[int, typer.Option(min=1, help="Examples per step.")] = 4,
    max_length: Annotated[int, typer.Option(min=8, help="Tokens per example at most (longer ones are cut).")] = 512,
    max_examples: Annotated[int | None, typer.Option(min=2, help="Use at most this many examples (random).")] = None,
    eval_fraction: Annotated[float, typer.Option(min=0.0, max=0.5, help="Held-out share for the loss report.")] = 0.05,
    chat_template: Annotated[bool, typer.Option(help="Conversational examples through the chat template.")] = True,
    save_steps: Annotated[int, typer.Option(min=1, help="Steps between checkpoints (a rerun resumes).")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the split, shuffling and initialisation.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Supervised fine-tuning of the target model on dialogue (MORLAIF's first step), with TRL's SFTTrainer.

    Prints the held-out loss before and after; writes OUT/policy (a model `morlaif sample --model OUT/policy`
    and `morlaif ppo train --set model.name_or_path=OUT/policy` load). Ctrl-C or SIGTERM finishes the step in
    hand, saves a checkpoint and exits with 130 or 143 (a second signal stops at once); interrupted runs resume
    from the newest checkpoint when the same command runs again. Example:

        morlaif sft ../shared/data/hh-rlhf/helpful-base-dev.jsonl.gz --max-examples 2000 --out runs/sft
    """
    from policy_trainer.sft import SFTDataError, SFTSettings, run_sft

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = SFTSettings(
        model=model,
        out=out,
        lora=lora,
        lora_r=lora_r,
        lora_alpha=2 * lora_r,
        merge=merge,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        max_length=max_length,
        max_examples=max_examples,
        eval_fraction=eval_fraction,
        chat_template=chat_template,
        seed=seed,
        save_steps=save_steps,
        device=device,
    )
    from morlaif.runs import interrupt_exit_code, quiet_libraries

    if quiet:
        quiet_libraries()
    try:
        res = run_sft(data, cfg, progress=not quiet)
    except SFTDataError as e:
        raise _fail(str(e)) from None
    except OSError as e:
        raise _fail(f"cannot load {model!r}: {e}") from None
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the checkpoint of the last step is saved
        raise _fail(
            f"stopped; the checkpoint is in {out / 'checkpoints'}: run the same command again to resume",
            interrupt_exit_code(e),
        ) from None

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"

    typer.echo(
        f"sft: {res.examples} examples ({res.held_out} held out), {res.steps} steps; held-out loss "
        f"{f(res.eval_loss_before)} -> {f(res.eval_loss_after)}; train loss {f(res.train_loss)}\n"
        f"wrote {res.out / 'policy'} and {res.out / 'sft.json'}"
    )
