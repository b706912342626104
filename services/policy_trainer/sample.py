"""`morlaif sample`: k responses per prompt from a target model, and comparisons among them, into the label store.

MORLAIF's data step: the (SFT) target model answers each prompt k times; pairs of its answers become the
comparisons the judge labels per principle (`morlaif feedback enqueue --source SOURCE`).

* Prompts: HH-RLHF transcripts (everything up to the last ``Assistant:``), a JSONL of ``{"prompt"}`` or chat
  ``{"messages"}``, or ``hf:<dataset id>[:split]`` through `datasets` (real use; needs the network).
* Backends: `LocalGenerator` (in-process transformers, batched `generate`; SmolLM2-135M-Instruct offline by
  default) or `EndpointGenerator` (any OpenAI-compatible chat or completions endpoint, e.g. a vLLM server, with
  ``n`` samples per request and the client's retries).
* Each response keeps how it was made in ``responses.meta`` (model, backend, sampling settings, sample index);
  comparisons are all pairs of a prompt's distinct responses, or a random subset of ``pairs`` per prompt.
* Resumable: a batch of prompts is written in one transaction after it is sampled, and a rerun with the same
  source skips prompts that already have responses from it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import itertools
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from morlaif.store import SampledPrompt, Store
from morlaif.store.store import ImportStats
from policy_trainer.data import hh_messages
from policy_trainer.generate import SamplingConfig, generate_responses

__all__ = ["EndpointGenerator", "Generator", "LocalGenerator", "SampleStats", "choose_pairs", "sample_to_store"]


class Generator(Protocol):
    """k responses for each prompt of a batch, and what to record about how they were made."""

    meta: dict[str, Any]

    def __call__(self, prompts: Sequence[str], k: int) -> list[list[str]]: ...


def _seed(*parts: object) -> int:
    h = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:4], "big") & 0x7FFFFFFF


def _settings(cfg: SamplingConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d.pop("batch_size", None)  # how the work was split, not how a response was sampled
    return d


class LocalGenerator:
    """In-process transformers: each prompt repeated k times in `generate` batches.

    A batch's seed is a function of the run's seed and its prompts, so a resumed run samples a batch it had
    not finished exactly as the interrupted run would have (same machine, same batch)."""

    def __init__(self, model: Any, tokenizer: Any, cfg: SamplingConfig, *, model_id: str) -> None:
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.meta = {"model": model_id, "backend": "transformers", **_settings(cfg)}

    def __call__(self, prompts: Sequence[str], k: int) -> list[list[str]]:
        flat = [p for p in prompts for _ in range(k)]
        cfg = dataclasses.replace(self.cfg, seed=_seed(self.cfg.seed, *prompts))
        out = generate_responses(self.model, self.tokenizer, flat, cfg)
        return [out[i * k : (i + 1) * k] for i in range(len(prompts))]


class EndpointGenerator:
    """An OpenAI-compatible endpoint (`chat`: /v1/chat/completions with the prompt as chat messages;
    `completions`: /v1/completions with the prompt as text), ``n=k`` per request, `concurrency` requests at
    a time; the openai client retries 429 and 5xx. A server that returns fewer than n choices is asked again."""

    def __init__(
        self,
        client: Any,
        model: str,
        cfg: SamplingConfig,
        *,
        api: str = "chat",
        concurrency: int = 4,
        base_url: str = "",
    ) -> None:
        if api not in ("chat", "completions"):
            raise ValueError(f"api must be chat or completions, got {api!r}")
        self.client, self.model, self.cfg, self.api, self.concurrency = client, model, cfg, api, concurrency
        self.meta = {"model": model, "backend": f"openai-{api}", "endpoint": base_url, **_settings(cfg)}

    def _one(self, prompt: str, k: int) -> list[str]:
        cfg = self.cfg
        common: dict[str, Any] = {
            "model": self.model,
            "max_tokens": cfg.max_new_tokens,
            "seed": _seed(cfg.seed, prompt),
        }
        if cfg.temperature > 0:
            common.update(temperature=cfg.temperature, top_p=cfg.top_p)
        else:
            common.update(temperature=0.0)
        texts: list[str] = []
        for attempt in range(4 * k):  # a server without `n` answers one at a time
            if len(texts) >= k:
                break
            n = k - len(texts)
            # a seeded server would repeat its first answers: each further request has a seed of its own
            common["seed"] = _seed(cfg.seed, prompt, attempt) if attempt else _seed(cfg.seed, prompt)
            if self.api == "chat":
                messages = hh_messages(prompt) or [{"role": "user", "content": prompt}]
                resp = self.client.chat.completions.create(messages=messages, n=n, **common)
                texts += [(c.message.content or "").strip() for c in resp.choices]
            else:
                resp = self.client.completions.create(prompt=prompt, n=n, **common)
                texts += [(c.text or "").strip() for c in resp.choices]
        if len(texts) < k:
            raise RuntimeError(f"the endpoint returned {len(texts)} of {k} responses for a prompt")
        return texts[:k]

    def __call__(self, prompts: Sequence[str], k: int) -> list[list[str]]:
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda p: self._one(p, k), prompts))


def choose_pairs(n: int, pairs: int | None, *, seed: int) -> list[tuple[int, int]]:
    """All pairs of n responses (pairs=None), or `pairs` of them drawn without replacement (seeded)."""
    every = list(itertools.combinations(range(n), 2))
    if pairs is None or pairs >= len(every):
        return every
    return sorted(random.Random(seed).sample(every, pairs))


@dataclass(kw_only=True)
class SampleStats:
    prompts: int = 0  # sampled now
    skipped: int = 0  # already sampled by an earlier run with this source
    responses: int = 0  # new distinct responses stored
    comparisons: int = 0  # new comparisons stored


def sample_to_store(
    store: Store,
    prompts: Iterable[str],
    generate: Generator,
    *,
    k: int,
    source: str,
    pairs: int | None = None,
    seed: int = 0,
    batch_prompts: int = 8,
    limit: int | None = None,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SampleStats:
    """Sample k responses per prompt not yet sampled under `source`, store them with their comparisons.

    `on_start(n)` is told how many prompts are to be sampled, `on_batch(n)` after each batch is stored;
    when `should_stop()` turns true (a signal), it returns after storing the batch in hand."""
    if k < 2:
        raise ValueError("k must be at least 2: comparisons need two responses")
    done = store.sampled_prompts(source)
    stats = SampleStats()
    todo: list[str] = []
    seen: set[str] = set()
    for p in prompts:
        if p in seen:
            continue
        seen.add(p)
        if p in done:
            stats.skipped += 1
            continue
        if limit is not None and len(todo) >= limit:
            break
        todo.append(p)
    if on_start is not None:
        on_start(len(todo))
    for i in range(0, len(todo), batch_prompts):
        batch = todo[i : i + batch_prompts]
        outs = generate(batch, k)
        records = []
        for prompt, texts in zip(batch, outs, strict=True):
            meta = [{**generate.meta, "sample": j, "k": k} for j in range(len(texts))]
            # pairs among distinct texts only: identical answers carry no preference
            first: dict[str, int] = {}
            for j, t in enumerate(texts):
                first.setdefault(t, j)
            distinct = sorted(first.values())
            chosen = choose_pairs(len(distinct), pairs, seed=_seed(seed, prompt))
            records.append(
                SampledPrompt(
                    prompt=prompt,
                    responses=list(texts),
                    meta=meta,
                    pairs=[(distinct[a], distinct[b]) for a, b in chosen],
                )
            )
        added: ImportStats = store.add_samples(records, source=source)
        stats.prompts += len(batch)
        stats.responses += added.responses
        stats.comparisons += added.comparisons
        if on_batch is not None:
            on_batch(len(batch))
        if should_stop is not None and should_stop():
            break
    return stats
