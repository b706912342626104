"""veRL's custom reward function: rewards from a morlaif PM server.

1. Write the prompts as veRL's parquet, with each prompt also in ``extra_info`` (veRL passes only the response
   to a reward function)::

       python -m morlaif.integrations.verl data/hh-train.parquet ../shared/data/hh-rlhf/harmless-base-train.jsonl.gz

2. Point veRL at this file (veRL 0.7+; the key comes from MORLAIF_API_KEY in the reward workers' environment)::

       export MORLAIF_API_KEY=...
       python -m verl.trainer.main_ppo \\
           data.train_files=data/hh-train.parquet data.val_files=data/hh-val.parquet \\
           reward.custom_reward_function.path=examples/verl_reward.py \\
           reward.custom_reward_function.name=compute_score_async \\
           +reward.custom_reward_function.reward_kwargs.url=http://pm:8000 \\
           +reward.custom_reward_function.reward_kwargs.weights_file=adapters/weights.json \\
           ...

   ``compute_score_async`` runs under veRL's async reward loop (0.9's default); ``compute_score`` is the
   blocking form for the legacy reward managers (and veRL before 0.7, under ``custom_reward_function.*``).
   Each sample's reward is ``score``; each principle's normalised score goes to ``reward_extra_info``.
"""

from morlaif.integrations.verl import compute_score, compute_score_async

__all__ = ["compute_score", "compute_score_async"]
