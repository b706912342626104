"""The labelling loop that fills the label store with AI feedback: judge labels per (comparison, principle).

The judges themselves are `morlaif.judges`; the store is `morlaif.store`. Modules:

* `worker`: `run_worker`, claim jobs under a lease, ask the judge both orders, write one label per job.
* `batch`: the OpenAI Batch API as a second mode (write, submit, poll, ingest idempotently).
* `report`: how judge labels agree with human labels, and with each other across principles.
* `cli`: ``morlaif feedback import``, ``import-hub``, ``enqueue``, ``run``, ``status``, ``report``, ``export``,
  ``batch-submit``, ``batch-ingest``.
"""
