"""`morlaif ppo plot`: a run's per-principle reward curves and KL, as one PNG."""

from __future__ import annotations

from pathlib import Path

from morlaif.errors import MorlaifError
from morlaif.run_folder import METRICS, RunFolder

__all__ = ["PlotError", "read_metrics", "plot_run"]


class PlotError(MorlaifError):
    """A metrics file that cannot be plotted."""


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of a run's metrics.jsonl (a torn last line is skipped; any other bad line is an error)."""
    if not path.is_file():
        raise PlotError(f"{path}: no such metrics file (is this a `morlaif ppo train` run folder?)")
    log = RunFolder(path.parent, metrics=path).read_metrics()
    for n, why in log.bad:
        if n != log.total_lines:  # the last one: the run was killed mid-write
            raise PlotError(f"{path}:{n}: {why}")
    if not log.rows:
        raise PlotError(f"{path}: no steps logged yet")
    return log.rows


def _smooth(xs: list[float], k: int) -> list[float]:
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= k:
            acc -= xs[i - k]
        out.append(acc / min(i + 1, k))
    return out


def plot_run(run_dir: Path, out: Path | None = None, *, smooth: int = 5) -> Path:
    """Per-principle mean scores and the scalarized reward (top), KL and beta (bottom), against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = read_metrics(run_dir / METRICS)
    steps = [r["step"] for r in rows]
    principles = sorted({k for r in rows for k in r if k.startswith("score/")})
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for key in principles:
        ys = [r.get(key, float("nan")) for r in rows]
        top.plot(steps, _smooth(ys, smooth), label=key.removeprefix("score/"))
    rewards = [r["reward"] for r in rows]
    top.plot(steps, rewards, "k-", lw=1, alpha=0.25, label="scalarized reward, per step")
    top.plot(steps, _smooth(rewards, smooth), "k-", lw=2, label="scalarized reward")
    top.set_ylabel(f"mean score (moving average of {smooth})")
    top.legend(loc="best", fontsize=8)
    top.grid(alpha=0.3)
    bottom.plot(steps, [r["kl"] for r in rows], label="KL to reference (nats / response)")
    bottom.set_ylabel("KL")
    bottom.set_xlabel("PPO step")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    twin = bottom.twinx()
    twin.plot(steps, [r["beta"] for r in rows], "r--", label="beta")
    twin.set_ylabel("beta", color="r")
    bottom.legend(loc="upper left", fontsize=8)
    bottom.grid(alpha=0.3)
    fig.suptitle(f"PPO run {run_dir.name}: {len(rows)} steps")
    fig.tight_layout()
    out = out or run_dir / "rewards.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
