"""OpenRLHF's Python-file reward mode, scoring through a morlaif PM server with its key.

OpenRLHF's URL mode (``--reward.remote_url http://pm:8000/get_reward``) sends no headers, so it cannot send a
Bearer key. Its file mode loads a Python file and calls ``reward_func(queries, prompts, labels)`` (0.9+: once
per sample, from a thread; 0.8: on a batch, in a Ray task; 0.6-0.7: on a batch, the return value used as the
reward tensor). `reward_func` posts to the server's ``/get_reward`` through `morlaif.client` (retries,
checked finite rewards) with the key from ``MORLAIF_API_KEY``; the server reads each query as URL mode does
(chat template, end-of-turn and padding strings, prompt split). Point OpenRLHF at a file that imports it::

    # reward_morlaif.py (examples/openrlhf_reward_func.py)
    from morlaif.integrations.openrlhf import reward_func

    MORLAIF_URL=http://pm:8000 MORLAIF_API_KEY=... python -m openrlhf.cli.train_ppo_ray \\
        --reward.remote_url reward_morlaif.py ...

Returns ``{"rewards", "scores", "extra_logs"}`` as torch tensors, as OpenRLHF's own examples do (``rewards``
drive the advantages, ``scores`` = sigmoid(reward) in (0, 1) OpenRLHF's dynamic filtering, ``extra_logs`` the
per-principle scores); under OpenRLHF before 0.8 the rewards tensor alone. Source of the contract:
``openrlhf/utils/agent.py`` (0.9-0.11) and ``openrlhf/utils/remote_rm_utils.py`` (0.6-0.8).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from morlaif import envvars
from morlaif.client import MorlaifClient

__all__ = ["reward_func", "client"]

_lock = threading.Lock()
_client: MorlaifClient | None = None


def client() -> MorlaifClient:
    """The process's client, made at the first call from ``MORLAIF_URL`` and ``MORLAIF_API_KEY``."""
    global _client
    with _lock:
        if _client is None:
            url = os.environ.get(envvars.URL, "http://127.0.0.1:8000")
            _client = MorlaifClient(url, api_key=os.environ.get(envvars.API_KEY) or None, timeout=180.0)
        return _client


def _tensors_only() -> bool:
    """OpenRLHF before 0.8 uses the file's return value as the reward tensor itself."""
    try:
        major, minor, *_ = (int(x) for x in metadata.version("openrlhf").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) < (0, 8)


def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any] | None = None, **_: Any) -> Any:
    """OpenRLHF's reward function: one reward per query, from the PM server's ``/get_reward``.

    `queries`: the policy's decoded sequences (prompt + response, special tokens kept); `prompts`: their prompts;
    `labels`: passed on, unused. Returns ``{"rewards": (N,), "scores": (N,), "extra_logs": {principle: (N,)}}``
    (float32 tensors), or the (N,) rewards tensor under OpenRLHF before 0.8. Raises the client's typed errors
    (after its retries) rather than return a missing or non-finite reward.
    """
    import torch

    res = client().get_reward(list(queries), list(prompts), None if labels is None else list(labels))
    rewards = torch.tensor(res.rewards, dtype=torch.float32)
    if _tensors_only():
        return rewards
    return {
        "rewards": rewards,
        "scores": torch.tensor(res.scores, dtype=torch.float32),
        "extra_logs": {k: torch.tensor(v, dtype=torch.float32) for k, v in res.extra_logs.items()},
    }
