"""`morlaif sft`: supervised fine-tuning of the target model on dialogue, through TRL's SFTTrainer.

MORLAIF's first step (and the training step of the reward-in-prompt method). This is a thin layer: our data
readers and defaults in, TRL's `SFTTrainer` (LoRA through PEFT optional) does the training.

Data files (``.jsonl`` or ``.jsonl.gz``; every error names ``file:line``), each line one example:

* HH-RLHF transcripts ``{"chosen", "rejected"}``: the prompt and the chosen response;
* ``{"prompt", "completion"}`` (what `morlaif score --condition` writes) or ``{"prompt", "response"}``;
* preference pairs ``{"prompt", "chosen", "rejected"}``: the chosen response;
* chat ``{"messages": [...]}`` ending with the assistant's turn: the turns before it and that turn.

With a chat template (SmolLM2) the examples are conversational (HH transcripts become messages) and the loss
is on the response only; without one the prompt text is continued by the response. The output folder holds
``policy/`` (a full model, LoRA merged unless ``--no-merge``, loadable by `morlaif sample --model` and
`morlaif ppo train --set model.name_or_path=...`), ``checkpoints/`` (a rerun resumes from the newest) and
``sft.json`` (settings, data, held-out loss before and after).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from morlaif.jsonl import JsonlError, iter_objects
from morlaif.runs import StopRequest, defer_stop_signals, git_commit
from morlaif.store.importers import split_hh
from policy_trainer.data import hh_messages, messages_to_transcript

__all__ = ["SFTDataError", "SFTSettings", "SFTResult", "read_sft_examples", "run_sft"]


class SFTDataError(JsonlError):
    """An SFT data file that cannot be used; the message names the file and line."""


@dataclass(kw_only=True)
class SFTSettings:
    model: str = "smollm2"
    """smollm2 (packaged SmolLM2-135M-Instruct), a model folder or a hub id."""
    out: Path = Path("runs/sft")
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    merge: bool = True
    """Save LoRA merged into a full model (what PPO and sampling load); False: the adapter alone."""
    epochs: float = 1.0
    learning_rate: float = 2e-4
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 512
    max_examples: int | None = None
    eval_fraction: float = 0.05
    """Held-out share of the examples (their loss before and after training is reported)."""
    chat_template: bool = True
    seed: int = 0
    save_steps: int = 200
    device: str = "auto"


@dataclass
class SFTResult:
    out: Path
    examples: int
    held_out: int
    steps: int
    eval_loss_before: float | None
    eval_loss_after: float | None
    train_loss: float | None


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not v.strip():
        raise SFTDataError(f"{where}: field {key!r} must be a non-empty string")
    return v


def _example(obj: dict[str, Any], where: str) -> tuple[str, str]:
    """(prompt, response) of one line."""
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or len(msgs) < 2 or not isinstance(msgs[-1], dict):
            raise SFTDataError(f"{where}: field 'messages' must list the turns, the last one the assistant's")
        last = msgs[-1]
        if last.get("role") != "assistant" or not isinstance(last.get("content"), str):
            raise SFTDataError(f"{where}: the last message must be the assistant's (the response to learn)")
        try:
            return messages_to_transcript(msgs[:-1], where), last["content"].strip()
        except JsonlError as e:
            raise SFTDataError(str(e)) from None
    if "prompt" in obj:
        prompt = _str(obj, "prompt", where)
        for key in ("completion", "response", "chosen"):
            if key in obj:
                return prompt, _str(obj, key, where).strip()
        raise SFTDataError(f"{where}: a 'prompt' needs a 'completion', 'response' or 'chosen'")
    if isinstance(obj.get("chosen"), str) and isinstance(obj.get("rejected"), str):
        parts = split_hh(obj["chosen"], obj["rejected"])
        if parts is None:
            raise SFTDataError(f"{where}: chosen and rejected share no prompt ending in 'Assistant:'")
        return parts[0], parts[1].strip()
    raise SFTDataError(f"{where}: expected 'prompt' + 'completion', chat 'messages', or HH-RLHF 'chosen'/'rejected'")


def read_sft_examples(paths: Sequence[str | Path]) -> list[tuple[str, str]]:
    """(prompt, response) examples of the files, in order; empty responses are left out."""
    out: list[tuple[str, str]] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise SFTDataError(f"{path}: no such data file")
        try:
            for n, obj in iter_objects(path):
                prompt, response = _example(obj, f"{path}:{n}")
                if response:
                    out.append((prompt, response))
        except SFTDataError:
            raise
        except JsonlError as e:
            raise SFTDataError(str(e)) from e
    if not out:
        raise SFTDataError(f"{', '.join(map(str, paths))}: no examples")
    return out


def _rows(examples: Sequence[tuple[str, str]], conversational: bool) -> list[dict[str, Any]]:
    if conversational:
        return [
            {
                "prompt": hh_messages(p) or [{"role": "user", "content": p}],
                "completion": [{"role": "assistant", "content": r}],
            }
            for p, r in examples
        ]
    return [{"prompt": p, "completion": " " + r} for p, r in examples]


def _save_and_stop_callback(stop: StopRequest) -> Any:
    """A transformers TrainerCallback: after the step in hand, a stop request saves a checkpoint and ends training."""
    from transformers import TrainerCallback

    class SaveAndStop(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if stop.is_set():
                control.should_save = True
                control.should_training_stop = True
            return control

    return SaveAndStop()


def run_sft(data: Sequence[str | Path], cfg: SFTSettings, *, progress: bool = True) -> SFTResult:
    """Fine-tune cfg.model on the examples of `data`; resumes from cfg.out/checkpoints when it is there.

    Ctrl-C or SIGTERM ends the step in hand, saves a checkpoint and raises `morlaif.runs.Stopped`."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from policy_trainer.train import POLICY_MANIFEST, _resolve, resolve_device

    examples = read_sft_examples(data)
    rng = random.Random(cfg.seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    if cfg.max_examples is not None:
        order = order[: cfg.max_examples]
    n_eval = max(1, round(len(order) * cfg.eval_fraction)) if cfg.eval_fraction > 0 and len(order) > 1 else 0
    held = [examples[i] for i in order[:n_eval]]
    train = [examples[i] for i in order[n_eval:]]

    source = _resolve(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    conversational = cfg.chat_template and bool(getattr(tokenizer, "chat_template", None))
    device = resolve_device(cfg.device)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    cfg.out.mkdir(parents=True, exist_ok=True)
    ckpt = cfg.out / "checkpoints"
    args = SFTConfig(
        output_dir=str(ckpt),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        max_length=cfg.max_length,
        logging_steps=10,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=1,
        eval_strategy="no",
        report_to=[],
        seed=cfg.seed,
        data_seed=cfg.seed,
        disable_tqdm=not progress,
        use_cpu=device.type == "cpu",
        dataloader_num_workers=0,
    )
    stop = StopRequest()
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(_rows(train, conversational)),
        eval_dataset=datasets.Dataset.from_list(_rows(held, conversational)) if held else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[_save_and_stop_callback(stop)],
    )
    resume = any(ckpt.glob("checkpoint-*"))
    before = trainer.evaluate()["eval_loss"] if held and not resume else None
    with defer_stop_signals(stop):
        out = trainer.train(resume_from_checkpoint=True if resume else None)
    if stop.is_set():  # the checkpoint of the last step is saved; the policy is written by the run that ends
        stop.raise_stopped()
    after = trainer.evaluate()["eval_loss"] if held else None

    policy = cfg.out / "policy"
    tmp = cfg.out / "policy.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    lm = trainer.model
    merged = cfg.lora and cfg.merge
    if merged:
        lm = lm.merge_and_unload()
    lm.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if cfg.lora and not cfg.merge:  # an adapter: load_trained_policy merges it onto the base
        manifest = {"base": cfg.model, "lora": True, "kind": "sft"}
        (tmp / POLICY_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(policy, ignore_errors=True)
    os.replace(tmp, policy)
    result = SFTResult(
        out=cfg.out,
        examples=len(order),
        held_out=len(held),
        steps=int(trainer.state.global_step),
        eval_loss_before=before,
        eval_loss_after=after,
        train_loss=float(out.training_loss) if out.training_loss is not None else None,
    )
    report = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()},
        "data": [str(p) for p in data],
        "conversational": conversational,
        "result": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(result).items()},
        "git_commit": git_commit(),
        "written": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    (cfg.out / "sft.json").write_text(json.dumps(report, indent=2) + "\n")
    return result
