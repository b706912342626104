"""morlaif as the reward of other trainers, with their own code unchanged.

Modules:

* `openrlhf`: OpenRLHF's file mode (``--reward.remote_url file.py``), ``reward_func(queries, prompts, labels)``,
  scoring with the key.
* `verl`: veRL's ``custom_reward_function``, ``compute_score`` (sync) and ``compute_score_async``, and
  `prepare_dataset` to write its parquet prompts.

TRL's GRPO/RLOO take `morlaif.client.RemoteReward` (an async reward function; `SyncRemoteReward`, a blocking
one). OpenRLHF's URL mode (``POST /get_reward``) and vLLM-style clients (``POST /classify``) need no code here: see
docs/integrations.md.
"""
