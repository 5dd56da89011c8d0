"""A picture of one canary run: weights and metrics over time (``kubetune dev canary``).

Four panels sharing the time axis: the candidate's route weight (as the route watch saw it
written); p95 latency, error rate and the positive-feedback share of both models (from the
lab's per-second Prometheus samples).
Dashed grey lines mark step changes; a green line the promotion, a red one the moment the
candidate's weight went back to 0 (the abort). matplotlib is imported only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubetune.devcluster.canary.result import CanaryResult
from kubetune.devcluster.canary.scenarios import BASELINE_MODEL, CANDIDATE_MODEL

PANELS = (
    ("p95_latency_s", "p95 latency (s)"),
    ("error_rate", "error rate"),
    ("positive_share", "positive feedback\n(cumulative share)"),
)
COLOURS = {BASELINE_MODEL: "tab:blue", CANDIDATE_MODEL: "tab:orange"}


def _series(result: CanaryResult, model: str, signal: str) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for sample in result.timeline:
        value = (sample.get("metrics") or {}).get(model, {}).get(signal)
        if value is not None:
            xs.append(float(sample["t"]))
            ys.append(float(value))
    return xs, ys


def _weights(result: CanaryResult) -> tuple[list[float], list[int]]:
    """The candidate's weight over time: from the route watch (to the millisecond) when it
    saw anything, else from the per-second samples; held to the last sample."""
    points = [
        (float(c["time"]) - result.started_at, int(c["weights"].get(CANDIDATE_MODEL, 0)))
        for c in result.route_changes
    ] or [(float(s["t"]), int(s["candidate_weight"])) for s in result.timeline]
    if points and result.timeline:
        points.append((max(points[-1][0], float(result.timeline[-1]["t"])), points[-1][1]))
    return [t for t, _ in points], [w for _, w in points]


def plot_result(result: CanaryResult, path: Path) -> Path:
    """Save the run's picture as PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, sharex=True, figsize=(10, 10), constrained_layout=True)
    ts, weights = _weights(result)
    axes[0].step(ts, weights, where="post", color=COLOURS[CANDIDATE_MODEL], label="candidate")
    axes[0].set_ylabel("candidate weight (%)")
    axes[0].set_ylim(-5, 105)
    for ax, (signal, label) in zip(axes[1:], PANELS, strict=True):
        for model in (BASELINE_MODEL, CANDIDATE_MODEL):
            xs, ys = _series(result, model, signal)
            ax.plot(xs, ys, color=COLOURS[model], label=model, marker=".", markersize=3)
        ax.set_ylabel(label)
        ax.legend(loc="upper left", fontsize="small")
    axes[-1].set_xlabel("seconds since the lab started")
    _marks(axes, result)
    title = f"{result.scenario}: {result.outcome} (expected {result.expected})"
    if result.abort:
        title += f" - abort {result.abort.get('reason')} on {result.abort.get('metric')}"
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _marks(axes: Any, result: CanaryResult) -> None:
    start = result.started_at
    for change in result.step_changes[1:]:
        for ax in axes:
            ax.axvline(change["time"] - start, color="grey", linestyle="--", linewidth=0.8)
    end: tuple[float, str, str] | None = None
    if result.weight_zero_at is not None:
        end = (result.weight_zero_at, "tab:red", "rolled back")
    elif result.outcome == "Promoted" and result.timeline:
        promoted = next((s for s in result.timeline if s["phase"] == "Promoted"), None)
        if promoted is not None:
            end = (float(promoted["time"]), "tab:green", "promoted")
    if end is not None:
        at, colour, label = end
        for ax in axes:
            ax.axvline(at - start, color=colour, linewidth=1.5)
        axes[0].annotate(label, (at - start, 100), color=colour, fontsize="small")
