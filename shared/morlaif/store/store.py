"""The label store's operations: import, enqueue, claim under a lease, complete, fail, status, export."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, func, or_, select, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from morlaif.errors import MorlaifError
from morlaif.store.models import Comparison, Job, Label, Prompt, Response, content_id, utcnow

__all__ = ["Store", "PairRecord", "LabelIn", "ClaimedJob", "ImportStats", "LeaseLost", "SampledPrompt"]

HUMAN = "human"


class LeaseLost(MorlaifError):
    """The job is no longer this worker's (its lease ran out and another worker took it, or it is done)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PairRecord:
    """A human preference: `chosen` is preferred to `rejected` under `principle`."""

    prompt: str
    chosen: str
    rejected: str
    principle: str
    source: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class LabelIn:
    """What a judge said: p(A better than B), and how it got there."""

    p_a: float
    hard: bool = False
    per_order: dict[str, Any] = field(default_factory=dict)
    judge_model: str = ""
    prompt_version: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    seconds: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class ClaimedJob:
    id: int
    comparison_id: str
    principle: str
    judge: str
    prompt: str
    response_a: str
    response_b: str
    attempts: int


@dataclass(frozen=True, kw_only=True, slots=True)
class SampledPrompt:
    """Responses sampled for one prompt (`meta[i]` says how `responses[i]` was made) and the pairs of them
    (indices into `responses`) to compare."""

    prompt: str
    responses: list[str]
    meta: list[dict[str, Any]]
    pairs: list[tuple[int, int]]


@dataclass(kw_only=True, slots=True)
class ImportStats:
    records: int = 0
    prompts: int = 0
    responses: int = 0
    comparisons: int = 0
    labels: int = 0


def _naive_utc(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC).replace(tzinfo=None)


class Store:
    def __init__(self, engine: Engine, *, max_attempts: int = 5) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.engine = engine
        self.max_attempts = max_attempts
        self._pg = engine.dialect.name == "postgresql"

    def close(self) -> None:
        """Close the pooled connections."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:  # the URL's password is hidden
        return f"Store({self.engine.url.render_as_string(hide_password=True)!r})"

    def _now(self) -> dt.datetime:
        # SQLite keeps datetimes as naive text: store and compare UTC without tzinfo there
        return utcnow() if self._pg else _naive_utc(utcnow())

    def _insert_ignore(self, s: Session, model: type, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        ins = postgresql.insert(model) if self._pg else sqlite.insert(model)
        s.execute(ins.on_conflict_do_nothing(), rows)

    def _existing(self, s: Session, col: Any, ids: Iterable[str]) -> set[str]:
        ids = list(ids)
        found: set[str] = set()
        for i in range(0, len(ids), 500):
            found.update(s.scalars(select(col).where(col.in_(ids[i : i + 500]))))
        return found

    # -------------------------------------------------------------------------------------- import
    def import_pairs(self, records: Iterable[PairRecord], *, batch: int = 500) -> ImportStats:
        """Store human preferences as comparisons with labels of judge `human`; duplicates add nothing."""
        stats = ImportStats()
        chunk: list[PairRecord] = []
        for rec in records:
            chunk.append(rec)
            if len(chunk) >= batch:
                self._import_chunk(chunk, stats)
                chunk = []
        if chunk:
            self._import_chunk(chunk, stats)
        return stats

    def _import_chunk(self, chunk: Sequence[PairRecord], stats: ImportStats) -> None:
        prompts: dict[str, dict[str, Any]] = {}
        responses: dict[str, dict[str, Any]] = {}
        comparisons: dict[str, dict[str, Any]] = {}
        labels: dict[tuple[str, str], dict[str, Any]] = {}
        for r in chunk:
            pid = content_id("prompt", r.prompt)
            prompts[pid] = {"id": pid, "text": r.prompt}
            ids = []
            for text in (r.chosen, r.rejected):
                rid = content_id("response", pid, text)
                responses[rid] = {"id": rid, "prompt_id": pid, "text": text, "source": r.source}
                ids.append(rid)
            chosen_id, rejected_id = ids
            if chosen_id == rejected_id:
                continue  # identical responses carry no preference
            a, b = sorted(ids)
            cid = content_id("comparison", pid, a, b)
            comparisons[cid] = {"id": cid, "prompt_id": pid, "response_a_id": a, "response_b_id": b, "source": r.source}
            labels[(cid, r.principle)] = {
                "comparison_id": cid,
                "principle": r.principle,
                "judge": HUMAN,
                "p_a": 1.0 if a == chosen_id else 0.0,
                "hard": True,
                "judge_model": HUMAN,
                "per_order": {},
            }
        stats.records += len(chunk)
        with Session(self.engine) as s, s.begin():
            stats.prompts += len(prompts) - len(self._existing(s, Prompt.id, prompts))
            stats.responses += len(responses) - len(self._existing(s, Response.id, responses))
            stats.comparisons += len(comparisons) - len(self._existing(s, Comparison.id, comparisons))
            have = set(
                s.execute(
                    select(Label.comparison_id, Label.principle).where(
                        Label.judge == HUMAN, Label.comparison_id.in_([c for c, _ in labels])
                    )
                )
            )
            stats.labels += len(set(labels) - have)
            self._insert_ignore(s, Prompt, list(prompts.values()))
            self._insert_ignore(s, Response, list(responses.values()))
            self._insert_ignore(s, Comparison, list(comparisons.values()))
            self._insert_ignore(s, Label, list(labels.values()))

    # ------------------------------------------------------------------------------------- samples
    def sampled_prompts(self, source: str) -> set[str]:
        """The texts of the prompts that already have responses from `source` (what a resumed sampling skips)."""
        with Session(self.engine) as s:
            q = select(Prompt.text).join(Response, Response.prompt_id == Prompt.id).where(Response.source == source)
            return set(s.scalars(q.distinct()))

    def add_samples(self, samples: Sequence[SampledPrompt], *, source: str) -> ImportStats:
        """Store sampled responses and the comparisons chosen among them, all of `samples` in one transaction
        (a run stopped between two calls loses nothing it reported). Identical texts of one prompt are one
        response; a pair of identical texts is no comparison."""
        stats = ImportStats(records=len(samples))
        prompts: dict[str, dict[str, Any]] = {}
        responses: dict[str, dict[str, Any]] = {}
        comparisons: dict[str, dict[str, Any]] = {}
        for smp in samples:
            pid = content_id("prompt", smp.prompt)
            prompts[pid] = {"id": pid, "text": smp.prompt}
            ids = []
            for text, meta in zip(smp.responses, smp.meta, strict=True):
                rid = content_id("response", pid, text)
                responses.setdefault(rid, {"id": rid, "prompt_id": pid, "text": text, "source": source, "meta": meta})
                ids.append(rid)
            for i, j in smp.pairs:
                if ids[i] == ids[j]:
                    continue
                a, b = sorted((ids[i], ids[j]))
                cid = content_id("comparison", pid, a, b)
                comparisons[cid] = {
                    "id": cid,
                    "prompt_id": pid,
                    "response_a_id": a,
                    "response_b_id": b,
                    "source": source,
                }
        with Session(self.engine) as s, s.begin():
            stats.prompts = len(prompts) - len(self._existing(s, Prompt.id, prompts))
            stats.responses = len(responses) - len(self._existing(s, Response.id, responses))
            stats.comparisons = len(comparisons) - len(self._existing(s, Comparison.id, comparisons))
            self._insert_ignore(s, Prompt, list(prompts.values()))
            self._insert_ignore(s, Response, list(responses.values()))
            self._insert_ignore(s, Comparison, list(comparisons.values()))
        return stats

    # ------------------------------------------------------------------------------------- enqueue
    def enqueue(
        self, principles: Sequence[str], judge: str, *, source: str | None = None, limit: int | None = None
    ) -> int:
        """A job per (comparison, principle) for `judge`; existing jobs are kept. Returns jobs added."""
        with Session(self.engine) as s, s.begin():
            q = select(Comparison.id).order_by(Comparison.created_at, Comparison.id)
            if source is not None:
                q = q.where(Comparison.source == source)
            if limit is not None:
                q = q.limit(limit)
            cids = list(s.scalars(q))
            added = 0
            for p in principles:
                have = set(s.scalars(select(Job.comparison_id).where(Job.principle == p, Job.judge == judge)))
                rows = [
                    {"comparison_id": c, "principle": p, "judge": judge, "status": "pending", "attempts": 0}
                    for c in cids
                    if c not in have
                ]
                self._insert_ignore(s, Job, rows)
                added += len(rows)
            return added

    # -------------------------------------------------------------------------------------- leases
    def claim(
        self, worker: str, *, judge: str | None = None, limit: int = 1, lease_s: float = 120.0
    ) -> list[ClaimedJob]:
        """Take up to `limit` jobs (of `judge`, or any) that are pending or whose lease ran out; each attempt counts."""
        now = self._now()
        with Session(self.engine) as s, s.begin():
            s.execute(
                update(Job)
                .where(Job.status == "running", Job.lease_expires_at < now, Job.attempts >= self.max_attempts)
                .values(
                    status="failed",
                    lease_owner=None,
                    lease_expires_at=None,
                    last_error=f"lease ran out on every one of {self.max_attempts} attempts (worker died?)",
                )
            )
            q = (
                select(Job)
                .where(or_(Job.status == "pending", and_(Job.status == "running", Job.lease_expires_at < now)))
                .where(Job.attempts < self.max_attempts)
                .where(Job.judge == judge if judge is not None else true())
                .order_by(Job.id)
                .limit(limit)
            )
            if self._pg:
                q = q.with_for_update(skip_locked=True)
            jobs = list(s.scalars(q))
            for j in jobs:
                j.status, j.lease_owner, j.attempts = "running", worker, j.attempts + 1
                j.lease_expires_at = now + dt.timedelta(seconds=lease_s)
            s.flush()
            ra, rb = aliased(Response), aliased(Response)
            rows = {
                cid: (pt, at, bt)
                for cid, pt, at, bt in s.execute(
                    select(Comparison.id, Prompt.text, ra.text, rb.text)
                    .join(Prompt, Prompt.id == Comparison.prompt_id)
                    .join(ra, ra.id == Comparison.response_a_id)
                    .join(rb, rb.id == Comparison.response_b_id)
                    .where(Comparison.id.in_({j.comparison_id for j in jobs}))
                )
            }
            return [
                ClaimedJob(
                    id=j.id,
                    comparison_id=j.comparison_id,
                    principle=j.principle,
                    judge=j.judge,
                    prompt=rows[j.comparison_id][0],
                    response_a=rows[j.comparison_id][1],
                    response_b=rows[j.comparison_id][2],
                    attempts=j.attempts,
                )
                for j in jobs
            ]

    def _owned(self, s: Session, job_id: int, worker: str) -> Job:
        q = select(Job).where(Job.id == job_id)
        if self._pg:
            q = q.with_for_update()
        job = s.scalar(q)
        if job is None or job.status != "running" or job.lease_owner != worker:
            raise LeaseLost(f"job {job_id} is no longer leased to {worker}")
        return job

    def complete(self, job_id: int, worker: str, label: LabelIn) -> None:
        """Write the job's one label and mark it done, atomically; `LeaseLost` if it is not ours."""
        if not 0.0 <= label.p_a <= 1.0:
            raise ValueError(f"p_a must be in [0, 1], got {label.p_a}")
        with Session(self.engine) as s, s.begin():
            job = self._owned(s, job_id, worker)
            s.add(
                Label(
                    comparison_id=job.comparison_id,
                    principle=job.principle,
                    judge=job.judge,
                    job_id=job.id,
                    p_a=label.p_a,
                    hard=label.hard,
                    per_order=label.per_order,
                    judge_model=label.judge_model,
                    prompt_version=label.prompt_version,
                    prompt_tokens=label.prompt_tokens,
                    completion_tokens=label.completion_tokens,
                    cost=label.cost,
                    seconds=label.seconds,
                )
            )
            job.status, job.lease_owner, job.lease_expires_at = "done", None, None

    def fail(self, job_id: int, worker: str, error: str) -> str:
        """Record a failed attempt; the job goes back to pending, or to failed after `max_attempts`."""
        with Session(self.engine) as s, s.begin():
            job = self._owned(s, job_id, worker)
            job.status = "failed" if job.attempts >= self.max_attempts else "pending"
            job.last_error = error[:2000]
            job.lease_owner, job.lease_expires_at = None, None
            return job.status

    # ------------------------------------------------------------------------------------- reading
    def status(self, judge: str | None = None) -> dict[str, dict[str, int]]:
        """Per principle: how many jobs are pending, running, done and failed."""
        q = select(Job.principle, Job.status, func.count()).group_by(Job.principle, Job.status)
        if judge is not None:
            q = q.where(Job.judge == judge)
        out: dict[str, dict[str, int]] = {}
        with Session(self.engine) as s:
            for p, st, n in s.execute(q):
                out.setdefault(p, {"pending": 0, "running": 0, "done": 0, "failed": 0})[st] = n
        return out

    def labels(self, principle: str, *, judge: str | None = None) -> Iterator[dict[str, Any]]:
        """Labels of `principle` with their texts: prompt, response_a, response_b, p_a, judge."""
        ra, rb = aliased(Response), aliased(Response)
        q = (
            select(Label.comparison_id, Label.judge, Label.p_a, Label.hard, Prompt.text, ra.text, rb.text)
            .join(Comparison, Comparison.id == Label.comparison_id)
            .join(Prompt, Prompt.id == Comparison.prompt_id)
            .join(ra, ra.id == Comparison.response_a_id)
            .join(rb, rb.id == Comparison.response_b_id)
            .where(Label.principle == principle)
            .order_by(Label.id)
        )
        if judge is not None:
            q = q.where(Label.judge == judge)
        with Session(self.engine) as s:
            for cid, j, p_a, hard, prompt, a, b in s.execute(q):
                yield {
                    "comparison_id": cid,
                    "judge": j,
                    "p_a": p_a,
                    "hard": hard,
                    "prompt": prompt,
                    "response_a": a,
                    "response_b": b,
                }

    def label_values(self, *, judges: Sequence[str] | None = None) -> list[tuple[str, str, str, float]]:
        """Every (comparison_id, principle, judge, p_a), optionally of some judges only."""
        q = select(Label.comparison_id, Label.principle, Label.judge, Label.p_a)
        if judges is not None:
            q = q.where(Label.judge.in_(list(judges)))
        with Session(self.engine) as s:
            return [(c, p, j, float(v)) for c, p, j, v in s.execute(q)]

    def preferences(self, principle: str, *, judge: str | None = None) -> Iterator[dict[str, Any]]:
        """Labels as PM training pairs: chosen = the side with p >= 0.5, p = its probability of being better."""
        for row in self.labels(principle, judge=judge):
            a_wins = row["p_a"] >= 0.5
            yield {
                "id": f"{row['comparison_id'][:16]}-{row['judge']}",
                "principle": principle,
                "judge": row["judge"],
                "prompt": row["prompt"],
                "chosen": row["response_a"] if a_wins else row["response_b"],
                "rejected": row["response_b"] if a_wins else row["response_a"],
                "p": row["p_a"] if a_wins else 1.0 - row["p_a"],
            }

    def export(self, principle: str, path: Path, *, judge: str | None = None) -> int:
        """Pair JSONL for PM training (`preferences`), written atomically."""
        n = 0
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for rec in self.preferences(principle, judge=judge):
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
        tmp.replace(path)
        return n
