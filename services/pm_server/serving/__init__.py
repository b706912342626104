"""The PM server's serving path: HTTP in, scores and rewards out.

A request goes routes -> service -> batcher -> the model layer's engine -> service (calibration, scalarizer) ->
response; docs/architecture.md names each step. Modules:

* `api`: `create_app`, the FastAPI app: its state, the body limit, start-up and the exception handlers.
* `routes`: the module-level `router`, every route, and the key checks.
* `errors`: the service's errors, each with its HTTP status, and `error_response`, the one error body builder.
* `service`: `ScoringService`: validates, picks principles, encodes, submits rows, calibrates, scalarizes.
* `adapters`: `AdapterManager`: the served principles; loads, replaces and unloads packages.
* `registry`: `Registry`, principle -> served entry, reference-counted so a hot swap fails no request.
* `batcher`: `Batcher`, bounded admission and one model thread cutting length-sorted micro-batches.
* `rules`: rule principles (length, regex), scalarized with the learned ones.
* `config`: `ServerSettings` from the ``MORLAIF_*`` variables, validated at start.
* `metrics`: the Prometheus metrics, one registry per server.
* `console`: the page at ``/`` and the JSON it reads (stats, PPO runs).
"""
