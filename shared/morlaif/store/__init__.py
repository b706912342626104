"""The label store: prompts, responses, comparisons, judge jobs and labels, in SQLite or PostgreSQL.

Usage::

    from morlaif.store import open_store
    store = open_store("sqlite:///var/labels.db")          # or postgresql+psycopg://user@host/db
    store.import_pairs(records)                           # content-hashed: importing twice adds nothing
    store.enqueue(["helpfulness", "factuality"], judge="gpt-4o-mini")
    jobs = store.claim("worker-1", limit=8, lease_s=120)  # leases: a dead worker's jobs come back
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
