"""morlaif: multi-objective reward serving for RLHF/RLAIF. The library every service shares.

It imports no service and not the command line above it (`tests/test_layering.py`). Modules:

* `protocol`: the PM server's wire format, pydantic models the server and the client import alike.
* `scalarize`: scalarizers, a (batch, principles) tensor of scores and weights in, one reward per item out.
* `client`: the PM server's HTTP client, sync and async (pooled, retrying transport errors, 429 and 503), and
  `RemoteReward` for TRL's GRPO/RLOO.
* `pinned`: `PinnedScorer` / `AsyncPinnedScorer`, scoring on the adapter versions of the call before (PPO,
  `RemoteReward`).
* `conversation`: one conversation form, rendered one way, whatever door it came in by.
* `chat_templates`: a policy's decoded text back into the conversation it encodes.
* `principles`: the default constitution (a principle is a name and a judge phrase).
* `distributed`: data parallelism of `ppo train` and `pm train` on accelerate.
* `run_folder`: the PPO run folder's layout and metrics log (written by the trainer, read by the console).
* `checkpoint`: the one checkpoint mechanism of both trainers.
* `runs`: long runs: stop signals, exit codes, progress bars.
* `stats`: Wilson intervals for accuracies and win rates.
* `errors`: the library's exception tree.
* `jsonl`: JSONL input files, errors naming the file and line.
* `envvars`: the environment variables the code reads directly.
* `models`: models shipped inside PyPI packages (nothing fetched from a hub).
* `__main__`: ``python -m morlaif``, the installed command for launchers that take a module.

Subpackages: `store` (the label store), `judges` (p(A better than B) per principle), `integrations` (OpenRLHF's
and veRL's reward functions).
"""

__version__ = "0.1.0"
