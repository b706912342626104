"""Environment variables the code reads directly (not through pydantic-settings or a CLI option's envvar).

One list, so that deployment files and documentation can be checked against what the code reads: the PM
server's settings are `pm_server.serving.config.ServerSettings` (MORLAIF_<FIELD>), CLI options name their own
envvar, and these are the rest.
"""

from __future__ import annotations

__all__ = [
    "API_KEY",
    "URL",
    "SCALARIZER_FILE",
    "ADMIN_KEY",
    "JUDGE_API_KEY",
    "OPENAI_API_KEY",
    "MODEL_CACHE",
    "SAMPLE_API_KEY",
    "SAMPLE_BASE_URL",
    "DIRECT",
]

API_KEY = "MORLAIF_API_KEY"
URL = "MORLAIF_URL"  # also read as a CLI option's envvar (morlaif score, eval)
SCALARIZER_FILE = "MORLAIF_SCALARIZER_FILE"  # the server's setting; the veRL integration reads it too
ADMIN_KEY = "MORLAIF_ADMIN_KEY"
JUDGE_API_KEY = "MORLAIF_JUDGE_API_KEY"
OPENAI_API_KEY = "OPENAI_API_KEY"
MODEL_CACHE = "MORLAIF_MODEL_CACHE"
SAMPLE_API_KEY = "MORLAIF_SAMPLE_API_KEY"
SAMPLE_BASE_URL = "MORLAIF_SAMPLE_BASE_URL"  # read as a CLI option's envvar (morlaif sample --endpoint)

DIRECT: dict[str, str] = {
    API_KEY: "the PM server's scoring key, as clients (morlaif score, ppo train, RemoteReward) send it",
    URL: "the PM server's URL, as the trainer integrations (OpenRLHF file mode, veRL) and `morlaif score` read it",
    ADMIN_KEY: "the PM server's admin key, as `morlaif pm` admin commands send it",
    JUDGE_API_KEY: "the judge endpoint's key (feedback workers, eval winrate)",
    OPENAI_API_KEY: "fallback for MORLAIF_JUDGE_API_KEY",
    MODEL_CACHE: "where dequantised packaged models are cached (default var/models)",
    SAMPLE_API_KEY: "the key of the endpoint `morlaif sample --endpoint` samples from (none for a local vLLM)",
}
