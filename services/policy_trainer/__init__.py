"""The policy's side: PPO against a PM server, whose rewards come only through `morlaif.client` (never an import
of the server), and the rest of MORLAIF's pipeline (sampling, SFT, reward conditioning, win rates).

Modules:

* `config`: the whole ``ppo train`` configuration, nested dataclasses from YAML, one docstring per field.
* `train`: `train`, a PPO run: prompts, client, policy, the step loop, metrics, checkpoints, resume.
* `ppo`: `PPOTrainer`, one PPO step in numbered phases (generate, score, KL, advantages, update).
* `ppo_core`: the maths as pure functions: KL-penalised rewards, GAE, whitening, losses, KL controllers.
* `rollout`: rollouts, one response per query from its own seeded stream (transformers or vLLM).
* `data`: prompts read, split into training and held-out by a hash, rendered for the policy.
* `generate`: batched sampling from a causal LM (evaluation and data generation).
* `sample`: ``morlaif sample``, k responses per prompt and the comparisons among them into the label store.
* `sft`: ``morlaif sft``, supervised fine-tuning through TRL's SFTTrainer.
* `conditioning`: reward-conditioned training (scores in the prompt) and its evaluation.
* `winrate`: win rates of two policies, judged per principle.
* `plot`: ``morlaif ppo plot``, a run's curves.
* `cli`, `eval_cli`, `pipeline_cli`: ``morlaif ppo``, ``morlaif eval``, ``morlaif sample`` / ``sft``.
"""
