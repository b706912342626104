"""OpenRLHF's file-mode reward function: rewards from a morlaif PM server that needs a key.

OpenRLHF's URL mode (``--reward.remote_url http://pm:8000/get_reward``) sends no headers, so against a server
with keys every reward would be refused. In file mode OpenRLHF loads this file and calls
``reward_func(queries, prompts, labels)``; it posts the same queries to the server's ``/get_reward`` with the
key from ``MORLAIF_API_KEY`` (never from the command line), and returns ``rewards``, ``scores`` (sigmoid of the
reward, for dynamic filtering) and ``extra_logs`` (each principle's score) as OpenRLHF reads them::

    export MORLAIF_URL=http://pm:8000 MORLAIF_API_KEY=...   # on every node that runs rollouts
    python -m openrlhf.cli.train_ppo_ray \\
        --actor.model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \\
        --data.prompt_dataset Anthropic/hh-rlhf --data.input_key chosen --data.apply_chat_template \\
        --reward.remote_url examples/openrlhf_reward_func.py \\
        ...

The server reads each query as in URL mode: the policy's chat template (ChatML, Llama 3, Gemma, Mistral, Phi-3,
DeepSeek), its end-of-turn and padding tokens, and a prompt OpenRLHF left-truncated. See docs/integrations.md.
"""

from morlaif.integrations.openrlhf import reward_func

__all__ = ["reward_func"]
