"""The console's server side: the page at `/`, and the JSON it reads that the scoring API does not give.

* `stats(metrics)`: the server's own Prometheus metrics as JSON (per-principle score histograms, request
  and failure counts, rows, model time); the page turns two polls into throughput.
* `list_runs(root)` / `read_run(root, name)`: PPO runs under a directory the server may read
  (``MORLAIF_RUNS_DIR``, a run being ``<root>/<name>/metrics.jsonl`` as `morlaif ppo train` writes it; the
  folder's format is `morlaif.run_folder`'s): the reward, KL and per-principle score curves, and
  `hacking_warnings` on them. Only direct children of the root whose real path stays inside it are runs
  (`morlaif.run_folder.find_runs`); a name is looked up among them, never joined onto a path.

The page itself (``console/index.html``, ``console.js``, ``console.css``) is static: no build step, no
third-party script, nothing fetched from outside the server.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from morlaif.run_folder import RunFolder, find_runs
from pm_server.serving.metrics import Metrics

__all__ = [
    "STATIC_DIR",
    "RunCurves",
    "RunSummary",
    "RunsResponse",
    "StatsResponse",
    "hacking_warnings",
    "list_runs",
    "read_run",
    "stats",
]

STATIC_DIR = Path(__file__).parent
#: metrics.jsonl lines read at most (the newest are kept): about 10 MB of a long run
_MAX_LINES = 20000
#: a principle "rises" or "falls" when its mean over the last quarter of a run differs from the first
#: quarter's by at least this many (normalised) score units
HACKING_DELTA = 0.25
#: KL over this many times the run's kl_target (its config.yaml; 6.0 otherwise) is a runaway
KL_RUNAWAY = 2.0


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScoreHistogram(_Model):
    principle: str
    bounds: list[float] = Field(description="Upper bounds of the buckets; the last count is above the last bound.")
    counts: list[int] = Field(description="Scores per bucket (not cumulative), len(bounds) + 1.")
    count: int
    mean: float | None


class StatsResponse(_Model):
    time: float = Field(description="Server time (Unix seconds) of this snapshot: rates come from two of them.")
    scores_total: int = Field(description="Principle-scores answered since start (all principles).")
    rows_total: int = Field(description="Rows (item x learned principle) run through the model.")
    forward_seconds: float = Field(description="Model time spent on them.")
    queue_rows: int
    requests: dict[str, int] = Field(description="Scoring requests by endpoint (any status).")
    failures: dict[str, int] = Field(description="Failed requests by reason.")
    principles: list[ScoreHistogram]


class RunSummary(_Model):
    name: str
    steps: int
    updated: float = Field(description="Last change of its metrics.jsonl (Unix seconds).")


class RunsResponse(_Model):
    configured: bool = Field(description="False when the server was started without a runs directory.")
    runs: list[RunSummary]


class RunCurves(_Model):
    name: str
    steps: list[int]
    reward: list[float | None]
    kl: list[float | None]
    scores: dict[str, list[float | None]] = Field(description="principle -> its mean score per step.")
    kl_target: float
    skipped_lines: int = Field(description="Lines that were not JSON objects with a step (e.g. one being written).")
    warnings: list[str] = Field(description="Signs of reward hacking or KL runaway, in words.")


# ------------------------------------------------------------------------------------------------- stats
def stats(metrics: Metrics) -> StatsResponse:
    hist: dict[str, dict[str, Any]] = {}
    requests: dict[str, int] = {}
    failures: dict[str, int] = {}
    rows = 0
    forward = 0.0
    queue = 0
    for family in metrics.registry.collect():
        for s in family.samples:
            if family.name == "morlaif_score":
                h = hist.setdefault(s.labels["principle"], {"cum": [], "count": 0, "sum": 0.0})
                if s.name.endswith("_bucket"):
                    h["cum"].append((float(s.labels["le"]), int(s.value)))
                elif s.name.endswith("_count"):
                    h["count"] = int(s.value)
            elif family.name == "morlaif_normalised_score_sum":
                hist.setdefault(s.labels["principle"], {"cum": [], "count": 0, "sum": 0.0})["sum"] = float(s.value)
            elif family.name == "morlaif_request_latency_seconds" and s.name.endswith("_count"):
                requests[s.labels["endpoint"]] = int(s.value)
            elif family.name == "morlaif_failures" and s.name.endswith("_total"):
                failures[s.labels["reason"]] = int(s.value)
            elif family.name == "morlaif_batch_rows" and s.name.endswith("_sum"):
                rows = int(s.value)
            elif family.name == "morlaif_forward_seconds" and s.name.endswith("_sum"):
                forward = float(s.value)
            elif family.name == "morlaif_queue_rows":
                queue = int(s.value)
    principles = []
    for name, h in sorted(hist.items()):
        cum = sorted(h["cum"])
        bounds = [le for le, _ in cum if math.isfinite(le)]
        totals = [c for _, c in cum]
        counts = [b - a for a, b in zip([0, *totals], totals, strict=False)]
        principles.append(
            ScoreHistogram(
                principle=name,
                bounds=bounds,
                counts=counts,
                count=h["count"],
                mean=h["sum"] / h["count"] if h["count"] else None,
            )
        )
    return StatsResponse(
        time=time.time(),
        scores_total=sum(p.count for p in principles),
        rows_total=rows,
        forward_seconds=forward,
        queue_rows=queue,
        requests=requests,
        failures=failures,
        principles=principles,
    )


# -------------------------------------------------------------------------------------------------- runs
def list_runs(root: Path | None) -> RunsResponse:
    if root is None:
        return RunsResponse(configured=False, runs=[])
    runs = []
    for name, run in find_runs(root).items():
        try:
            steps = sum(1 for ln in run.read_metrics_lines(_MAX_LINES) if ln.strip())
            updated = run.metrics_path.stat().st_mtime
        except OSError:
            continue
        runs.append(RunSummary(name=name, steps=steps, updated=updated))
    return RunsResponse(configured=True, runs=runs)


def _kl_target(run: RunFolder) -> float:
    try:
        value = float(run.read_config()["ppo"]["kl_target"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return 6.0
    return value if math.isfinite(value) and value > 0 else 6.0


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def read_run(root: Path | None, name: str) -> RunCurves | None:
    """The curves of run `name`, or None when there is no such run under `root`."""
    if root is None:
        return None
    run = find_runs(root).get(name)
    if run is None:
        return None
    log = run.read_metrics(_MAX_LINES)
    rows = log.rows
    steps: list[int] = []
    reward: list[float | None] = []
    kl: list[float | None] = []
    principles = sorted({k[len("score/") :] for r in rows for k in r if k.startswith("score/")})
    scores: dict[str, list[float | None]] = {p: [] for p in principles}
    for r in rows:
        steps.append(r["step"])
        reward.append(_num(r.get("reward")))
        kl.append(_num(r.get("kl")))
        for p in principles:
            scores[p].append(_num(r.get(f"score/{p}")))
    target = _kl_target(run)
    return RunCurves(
        name=name,
        steps=steps,
        reward=reward,
        kl=kl,
        scores=scores,
        kl_target=target,
        skipped_lines=len(log.bad),
        warnings=hacking_warnings(scores, kl, target),
    )


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def hacking_warnings(scores: dict[str, list[float | None]], kl: list[float | None], kl_target: float) -> list[str]:
    """Reward hacking as it shows in the curves: over the run (first quarter of its steps against the last),
    one principle rising while another falls, or KL above `KL_RUNAWAY` times its target. Needs 8 steps."""
    n = len(kl)
    if n < 8:
        return []
    q = n // 4
    out = []
    moves = {}
    for p, xs in scores.items():
        a, b = _mean(xs[:q]), _mean(xs[-q:])
        if a is not None and b is not None:
            moves[p] = b - a
    rising = sorted((d, p) for p, d in moves.items() if d >= HACKING_DELTA)
    falling = sorted((d, p) for p, d in moves.items() if d <= -HACKING_DELTA)
    if rising and falling:
        up = ", ".join(f"{p} {d:+.2f}" for d, p in reversed(rising))
        down = ", ".join(f"{p} {d:+.2f}" for d, p in falling)
        out.append(
            f"possible reward hacking: {up} while {down} (mean score, first quarter of the run to the last): "
            "the policy may be exploiting the rising principles' models at the others' expense"
        )
    last_kl = _mean(kl[-q:])
    if last_kl is not None and last_kl > KL_RUNAWAY * kl_target:
        out.append(
            f"KL runaway: {last_kl:.2f} nats over the last quarter of the run, more than {KL_RUNAWAY:g}x the "
            f"target {kl_target:g}: the policy is drifting away from the reference"
        )
    return out
