"""PM server settings, from `MORLAIF_*` environment variables (or a `.env` file), validated at start-up."""

from __future__ import annotations

import functools
import ipaddress
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pm_server.model.base import EMBEDDED_BASE, DType

__all__ = ["ServerSettings", "SettingsError", "is_loopback"]


class SettingsError(ValueError):
    """The server would run insecurely or cannot find what it needs; the message says what to set."""


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MORLAIF_", env_file=".env", extra="ignore")

    # -- model
    base_model: str = Field(
        default=EMBEDDED_BASE,
        description="Base model: `minilm` (the embedded MiniLM-L6), a local path, or a hub id.",
    )
    adapter_root: Path = Field(default=Path("var/adapters"), description="Root of the adapter packages.")
    load_on_start: bool = Field(default=True, description="Load the newest version of every package found.")
    rules_file: Path | None = Field(default=None, description="JSON list of rule principles (default: built-in).")
    max_length: int | None = Field(default=None, ge=8, description="Cap on model input tokens (default 512).")
    device: str = Field(default="auto", description="cpu, cuda, cuda:1, ... or auto (CUDA when present).")
    dtype: DType = Field(
        default="auto",
        description="Weights and activations: auto (bfloat16 where the hardware computes it natively, a CPU with "
        "AVX512-BF16 or AMX or a CUDA GPU with bfloat16, float32 elsewhere), float32 (scores exactly as trained), or "
        "bfloat16 (about 1.8x faster on such a CPU; scores within about 1% of float32's, the same validation "
        "accuracy: docs/benchmarks.md).",
    )
    num_threads: int | None = Field(default=None, ge=1, description="torch intra-op threads (default: torch's).")

    # -- HTTP
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    api_key: SecretStr | None = Field(default=None, description="Bearer key for scoring endpoints.")
    admin_key: SecretStr | None = Field(default=None, description="Bearer key for /v1/adapters (admin).")
    insecure_dev: bool = Field(
        default=False,
        description="Allow running without keys: local development only, so refused unless `host` is a loopback "
        "address.",
    )
    trusted_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Client networks (CIDR, e.g. 10.0.0.0/8) whose requests score without a key: for trainers "
        "that cannot send one (OpenRLHF's --reward.remote_url). Admin routes always need the admin key. The "
        "client address is the TCP peer's (a proxy's X-Forwarded-For is not trusted). Logged at start.",
    )
    served_model_name: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="More names (comma-separated) under which /classify and /v1/models serve the default reward, as "
        "vLLM's --served-model-name: e.g. the reward model path a veRL config posts as `model`.",
    )
    get_reward_extra_logs: bool = Field(
        default=True,
        description="Send per-principle scores as /get_reward's extra_logs (OpenRLHF 0.9+ logs them; 0.8.x cannot "
        "take them over HTTP: set false for it).",
    )
    policy_tokenizer: str | None = Field(
        default=None,
        description="The policy's tokenizer (a local folder, or a hub id in the local cache): its EOS, pad and "
        "end-of-turn tokens are stripped from the end of a /get_reward query too, and with policy_template auto its "
        "chat template fixes which one queries are read with.",
    )
    policy_template: str = Field(
        default="auto",
        description="How /get_reward and /classify read a policy's chat template: auto (recognise chatml, llama3, "
        "gemma, deepseek, mistral, phi3 by their markers), none (plain text, split from the prompt), or one of those "
        "names.",
    )
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_items: int = Field(default=512, ge=1, description="Most items in one /v1/score request.")
    max_text_chars: int = Field(default=65536, ge=16, description="Longest prompt or response accepted.")
    keep_alive_s: int = Field(
        default=75,
        ge=1,
        description="How long an idle keep-alive connection stays open (longer than a client's pause after a 429, "
        "so that a busy server never closes a connection a client is about to reuse).",
    )

    runs_dir: Path | None = Field(
        default=None,
        description="PPO runs the console shows (<runs_dir>/<run>/metrics.jsonl, as `morlaif ppo train` writes).",
    )

    # -- batching
    max_batch_tokens: int = Field(default=16384, ge=64, description="Padded tokens per micro-batch.")
    max_batch_rows: int = Field(default=128, ge=1, description="Rows (item x principle) per micro-batch.")
    max_wait_ms: float = Field(default=5.0, ge=0, description="How long a micro-batch waits to fill up.")
    max_queued_rows: int = Field(default=8192, ge=1, description="Admission bound; beyond it requests get 429.")

    # -- /get_reward (OpenRLHF) default scalarizer
    default_scalarizer: str = "linear"
    default_weights: dict[str, float] | None = None
    default_scalarizer_params: dict[str, Any] = Field(default_factory=dict)
    scalarizer_file: Path | None = Field(
        default=None,
        description="JSON {name, weights, params} (e.g. the weights `morlaif pm eval` fits): overrides the "
        "three default_scalarizer settings.",
    )

    @model_validator(mode="after")
    def _scalarizer_file(self) -> ServerSettings:
        if self.scalarizer_file is not None:
            from morlaif.protocol import ScalarizerSpec

            try:
                spec = ScalarizerSpec.from_file(self.scalarizer_file)
            except ValueError as e:
                raise SettingsError(str(e)) from e
            from morlaif.scalarize import SCALARIZERS

            if spec.name not in SCALARIZERS:
                raise SettingsError(
                    f"{self.scalarizer_file}: unknown scalarizer {spec.name!r}; known: {', '.join(SCALARIZERS)}"
                )
            self.default_scalarizer = spec.name
            self.default_weights = spec.weights
            self.default_scalarizer_params = dict(spec.params)
        return self

    @field_validator("trusted_networks", "served_model_name", mode="before")
    @classmethod
    def _networks_from_text(cls, v: Any) -> Any:
        if isinstance(v, str):  # MORLAIF_TRUSTED_NETWORKS=10.0.0.0/8,192.168.1.0/24 (or a JSON list)
            v = v.strip()
            if v.startswith("["):
                import json

                return json.loads(v)
            return [x.strip() for x in v.split(",") if x.strip()]
        return v

    @field_validator("trusted_networks")
    @classmethod
    def _valid_networks(cls, v: list[str]) -> list[str]:
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as e:
                raise ValueError(f"{net!r} is not a network (CIDR such as 10.0.0.0/8): {e}") from None
        return v

    @field_validator("policy_template")
    @classmethod
    def _known_template(cls, v: str) -> str:
        from morlaif.chat_templates import TEMPLATES

        if v not in ("auto", "none") and v not in TEMPLATES:
            raise ValueError(f"unknown chat template {v!r}; known: auto, none, {', '.join(TEMPLATES)}")
        return v

    def trusts(self, client_host: str | None) -> bool:
        """True when `client_host` (an IP address) is in one of `trusted_networks`."""
        if not self.trusted_networks or not client_host:
            return False
        try:
            addr = ipaddress.ip_address(client_host)
        except ValueError:
            return False
        return any(addr in _network(n) for n in self.trusted_networks)

    @model_validator(mode="after")
    def _secure(self) -> ServerSettings:
        if self.insecure_dev and (self.api_key is None or self.admin_key is None) and not is_loopback(self.host):
            raise SettingsError(
                f"--insecure-dev (MORLAIF_INSECURE_DEV) runs without keys and is for loopback only, but host is "
                f"{self.host!r}: set MORLAIF_API_KEY and MORLAIF_ADMIN_KEY to serve on a network (and "
                "MORLAIF_TRUSTED_NETWORKS for trainers that cannot send a key)"
            )
        if not self.insecure_dev:
            missing = [
                n
                for n, v in (("MORLAIF_API_KEY", self.api_key), ("MORLAIF_ADMIN_KEY", self.admin_key))
                if v is None or not v.get_secret_value()
            ]
            if missing:
                raise SettingsError(
                    f"set {' and '.join(missing)} (Bearer keys for scoring and admin), or MORLAIF_INSECURE_DEV=1 "
                    "for a local development server without keys"
                )
            assert self.api_key is not None and self.admin_key is not None
            for name, key in (("MORLAIF_API_KEY", self.api_key), ("MORLAIF_ADMIN_KEY", self.admin_key)):
                if len(key.get_secret_value()) < 16:
                    raise SettingsError(f"{name} must be at least 16 characters")
            if self.api_key.get_secret_value() == self.admin_key.get_secret_value():
                raise SettingsError("MORLAIF_API_KEY and MORLAIF_ADMIN_KEY must differ")
        return self


@functools.cache
def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A trusted network, parsed once (`trusts` runs on every keyless request)."""
    return ipaddress.ip_network(cidr, strict=False)


def is_loopback(host: str) -> bool:
    """True for `localhost` and any loopback address (127.0.0.0/8, ::1): a bind address no other host reaches."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
