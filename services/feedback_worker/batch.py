"""The OpenAI Batch API as a second mode: write the request file, submit, poll, ingest (idempotently).

Submitting claims the jobs under a lease owned by the batch (long enough for its completion window), so
no live worker takes them meanwhile; ingesting writes each job's one label, and ingesting the same batch
again changes nothing. A batch that failed or expired returns its jobs to the queue as failed attempts.
"""

from __future__ import annotations

import io
import json
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from morlaif.judges.remote import PROMPT_VERSION, JudgeError, OpenAIJudge, OrderResult, combine, order_from_completion
from morlaif.principles import get_principle
from morlaif.store import LabelIn, LeaseLost, Store

__all__ = ["BatchIngest", "submit_batch", "ingest_batch"]

_WINDOW_S = 24 * 3600
_DONE = {"completed"}
_FAILED = {"failed", "expired", "cancelled"}


@dataclass(kw_only=True)
class BatchIngest:
    status: str
    labels: int = 0
    already: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        fails = ", ".join(f"{k}: {v}" for k, v in sorted(self.failures.items())) or "none"
        return f"batch {self.status}: labels written {self.labels}, already ingested {self.already}, failed {fails}"


def submit_batch(store: Store, judge: OpenAIJudge, client: Any, *, limit: int = 1000) -> str | None:
    """Claim up to `limit` of the judge's jobs, upload both orders of each as a batch; its id (None: no job)."""
    owner = f"batch:{uuid.uuid4().hex[:12]}"
    jobs = store.claim(owner, judge=judge.model, limit=limit, lease_s=_WINDOW_S + 3600)
    if not jobs:
        return None
    lines = []
    for j in jobs:
        try:
            phrase = get_principle(j.principle).judge_phrase
        except KeyError:
            store.fail(j.id, owner, f"unknown principle {j.principle!r}")
            continue
        for order, (first, second) in (("ab", (j.response_a, j.response_b)), ("ba", (j.response_b, j.response_a))):
            lines.append(
                {
                    "custom_id": f"{j.id}:{order}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": judge.request_body(phrase, j.prompt, first, second),
                }
            )
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    f = client.files.create(file=("morlaif-batch.jsonl", io.BytesIO(data)), purpose="batch")
    b = client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"morlaif_owner": owner, "morlaif_prompt_version": PROMPT_VERSION},
    )
    return str(b.id)


def _jsonl(client: Any, file_id: str | None) -> list[dict[str, Any]]:
    if not file_id:
        return []
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines() if x.strip()]


def ingest_batch(store: Store, client: Any, batch_id: str, *, judge_model: str) -> BatchIngest:
    """Write the labels of a finished batch; a batch still running is left alone."""
    b = client.batches.retrieve(batch_id)
    owner = (b.metadata or {}).get("morlaif_owner")
    if not owner:
        raise ValueError(f"batch {batch_id} was not submitted by morlaif (no morlaif_owner in its metadata)")
    out = BatchIngest(status=str(b.status))
    fails: dict[str, int] = defaultdict(int)
    job_ids = sorted({int(x["custom_id"].split(":")[0]) for x in _jsonl(client, b.input_file_id)})
    if b.status in _FAILED:
        for jid in job_ids:
            try:
                store.fail(jid, owner, f"batch {batch_id} {b.status}")
                fails[f"batch_{b.status}"] += 1
            except LeaseLost:
                out.already += 1
        out.failures = dict(fails)
        return out
    if b.status not in _DONE:
        return out
    orders: dict[int, dict[str, OrderResult | JudgeError]] = defaultdict(dict)
    for row in _jsonl(client, b.output_file_id) + _jsonl(client, getattr(b, "error_file_id", None)):
        jid, order = row["custom_id"].split(":")
        resp = row.get("response") or {}
        if resp.get("status_code") != 200:
            orders[int(jid)][order] = JudgeError(
                f"batch line HTTP {resp.get('status_code')}", reason=f"http_{resp.get('status_code')}"
            )
            continue
        try:
            orders[int(jid)][order] = order_from_completion(resp.get("body") or {})
        except JudgeError as e:
            orders[int(jid)][order] = e
    for jid in job_ids:
        got = orders.get(jid, {})
        ab, ba = got.get("ab"), got.get("ba")
        try:
            if isinstance(ab, OrderResult) and isinstance(ba, OrderResult):
                j = combine(ab, ba)
                store.complete(
                    jid,
                    owner,
                    LabelIn(
                        p_a=j.p_a,
                        hard=j.hard,
                        per_order=j.per_order,
                        judge_model=judge_model,
                        prompt_version=PROMPT_VERSION,
                        prompt_tokens=j.prompt_tokens,
                        completion_tokens=j.completion_tokens,
                    ),
                )
                out.labels += 1
            else:
                err = next((x for x in (ab, ba) if isinstance(x, JudgeError)), None)
                reason = err.reason if err is not None else "missing_from_batch"
                store.fail(jid, owner, f"{reason}: {err.message if err else 'no answer in the output file'}")
                fails[reason] += 1
        except LeaseLost:
            out.already += 1  # ingested before: nothing to do
    out.failures = dict(fails)
    return out
