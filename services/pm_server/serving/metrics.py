"""Prometheus metrics, one registry per server instance (tests run several servers in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

_TOKEN_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_latency = Histogram(
            "morlaif_request_latency_seconds",
            "End-to-end latency of scoring requests.",
            ["endpoint"],
            registry=r,
        )
        self.failures = Counter(
            "morlaif_failures_total", "Failed requests by reason (error code).", ["reason"], registry=r
        )
        self.queue_rows = Gauge("morlaif_queue_rows", "Rows waiting for the model thread.", registry=r)
        self.batch_rows = Histogram("morlaif_batch_rows", "Rows per micro-batch.", buckets=_ROW_BUCKETS, registry=r)
        self.batch_tokens = Histogram(
            "morlaif_batch_tokens",
            "Real (unpadded) tokens per micro-batch.",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.batch_padded_tokens = Histogram(
            "morlaif_batch_padded_tokens",
            "Padded tokens per micro-batch.",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.dropped_rows = Counter(
            "morlaif_dropped_rows_total",
            "Queued rows dropped unrun: their client went away or their request already failed.",
            registry=r,
        )
        self.prompt_tokens_shared = Counter(
            "morlaif_prompt_tokens_shared_total",
            "Decoder prompt tokens computed once for several responses instead of once per response.",
            registry=r,
        )
        self.forward_seconds = Histogram("morlaif_forward_seconds", "Model time per micro-batch.", registry=r)
        self.scores = Histogram(
            "morlaif_score",
            "Normalised scores per principle.",
            ["principle"],
            buckets=(-3, -2, -1, -0.5, 0, 0.5, 1, 2, 3),
            registry=r,
        )
        # a histogram with negative buckets exposes no _sum (OpenMetrics), so the sum, for means, is kept here
        self.score_sum = Gauge(
            "morlaif_normalised_score_sum", "Sum of the normalised scores per principle.", ["principle"], registry=r
        )
        self.loaded = Gauge("morlaif_principles_loaded", "Principles served.", registry=r)
