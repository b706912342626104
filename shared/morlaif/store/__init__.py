"""The label store: prompts, responses, comparisons, judge jobs and labels, in SQLite or PostgreSQL.

Usage::

    from morlaif.store import open_store
    store = open_store("sqlite:///var/labels.db")          # or postgresql+psycopg://user@host/db
    store.import_pairs(records)                           # content-hashed: importing twice adds nothing
    store.enqueue(["helpfulness", "factuality"], judge="gpt-4o-mini")
    jobs = store.claim("worker-1", limit=8, lease_s=120)  # leases: a dead worker's jobs come back

Modules:

* `db`: `open_store` (engine set-up per dialect, Alembic migrations to head; `StoreUnavailable`).
* `store`: `Store`, the operations: import, enqueue, claim under a lease, complete, fail, status, export.
* `models`: the SQLAlchemy 2.x tables (content rows keyed by content hashes).
* `importers`: human preference data (pair JSONL, HH-RLHF transcripts from a file or the hub) into `PairRecord`s.
* `migrations`: the Alembic environment and versions.
"""

from morlaif.store.db import StoreUnavailable, open_store
from morlaif.store.store import ClaimedJob, LabelIn, LeaseLost, PairRecord, SampledPrompt, Store

__all__ = [
    "open_store",
    "StoreUnavailable",
    "Store",
    "PairRecord",
    "LabelIn",
    "ClaimedJob",
    "LeaseLost",
    "SampledPrompt",
]
