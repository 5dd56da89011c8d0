"""Training curves: loss, eval loss, learning rate and throughput as a picture of the run.

Grafana shows a run while Prometheus keeps its series; the picture stays with the model.
Rank 0 records one point per logged step (:meth:`CurveRecorder.record_step`) and one per
evaluation (:meth:`CurveRecorder.record_eval`); at the end of the run
:func:`write_curves` writes, next to the weights,

- ``training_curves.png``: 2x2 panels (training loss, eval loss as markers over the
  training loss, learning rate, tokens/s), optimizer steps on x, restarts as dashed lines;
- ``training_curves.json``: the recorded series themselves (non-finite values as null),

both atomically (temp file + rename), and the model card embeds the picture.

Memory is bounded: a series keeps at most ``max_points`` points by doubling its stride
(keeping every other point) when it fills up, so a million-step run costs the same few
kilobytes as a short one; the newest point is always kept, so the curve ends where the
run ended. Exact figures that downsampling would blur (best loss and its step, the
number of points recorded) are tracked separately.

A resumed run continues its curves: the recorder is saved into each checkpoint
(``curves.json`` next to ``trainer_state.json``, atomic with the checkpoint) and loaded
on resume, so the picture shows the steps before the restart too. Nothing here may fail a
run: every error while saving, loading or drawing is logged and the run goes on.
"""

from __future__ import annotations

import io
import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune_trainer.checkpoint.atomic import write_atomic

log = logging.getLogger("kubetune.trainer.curves")

CURVES_PNG = "training_curves.png"
CURVES_JSON = "training_curves.json"
#: the recorder's state inside a checkpoint directory
CHECKPOINT_FILE = "curves.json"
FORMAT = 1
MAX_POINTS = 2000
#: 11 x 7.5 inches at 100 dpi: 1100 x 750 pixels, readable on a model hub page
FIG_SIZE = (11.0, 7.5)
DPI = 100
STEP_SERIES = ("loss", "learning_rate", "tokens_per_second")


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class Series:
    """Points ``(step, value)`` of one curve, at most ``max_points`` of them.

    Every ``stride``-th recorded point is kept; when the list is full, every other kept
    point is dropped and the stride doubles, so the kept points stay evenly spread over
    the whole run. ``last`` is the newest point, kept even when the stride skips it.
    """

    max_points: int = MAX_POINTS
    steps: list[int] = field(default_factory=list)
    values: list[float | None] = field(default_factory=list)
    stride: int = 1
    recorded: int = 0
    last: tuple[int, float | None] | None = None

    def add(self, step: int, value: float | None) -> None:
        value = _finite(value)
        if self.recorded % self.stride == 0:
            self.steps.append(step)
            self.values.append(value)
            self.last = None
            if len(self.steps) >= self.max_points:
                self.steps = self.steps[::2]
                self.values = self.values[::2]
                self.stride *= 2
                if self.steps[-1] != step:  # the newest point fell out: keep it as `last`
                    self.last = (step, value)
        else:
            self.last = (step, value)
        self.recorded += 1

    def points(self) -> tuple[list[int], list[float | None]]:
        """The kept points plus the newest one (at most ``max_points`` in all)."""
        steps, values = list(self.steps), list(self.values)
        if self.last is not None:
            steps.append(self.last[0])
            values.append(self.last[1])
        return steps, values

    def truncate(self, step: int) -> None:
        """Forget points after ``step`` (they are redone after a resume)."""
        keep = [i for i, s in enumerate(self.steps) if s <= step]
        self.steps = [self.steps[i] for i in keep]
        self.values = [self.values[i] for i in keep]
        if self.last is not None and self.last[0] > step:
            self.last = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "values": self.values,
            "stride": self.stride,
            "recorded": self.recorded,
            "last": list(self.last) if self.last is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], max_points: int) -> Series:
        steps = [int(s) for s in data["steps"]]
        values = [_finite(v) for v in data["values"]]
        if len(steps) != len(values):
            raise ValueError("steps and values differ in length")
        last = data.get("last")
        series = cls(
            max_points=max_points,
            steps=steps,
            values=values,
            stride=max(1, int(data.get("stride", 1))),
            recorded=int(data.get("recorded", len(steps))),
            last=(int(last[0]), _finite(last[1])) if last else None,
        )
        while len(series.steps) >= max_points:  # a smaller bound than the one saved with
            series.steps, series.values = series.steps[::2], series.values[::2]
            series.stride *= 2
        return series


class CurveRecorder:
    """Rank 0's record of the run's curves; a no-op where ``enabled`` is false."""

    def __init__(self, enabled: bool = True, max_points: int = MAX_POINTS) -> None:
        self.enabled = enabled
        self.max_points = max_points
        self.series = {name: Series(max_points) for name in STEP_SERIES}
        #: evaluations: ``{"step", "loss", "model"}`` (model: base or tuned)
        self.evals: list[dict[str, Any]] = []
        #: steps at which the run was resumed from a checkpoint
        self.restarts: list[int] = []
        self.best_loss: tuple[int, float] | None = None

    # ---------------------------------------------------------------- recording
    def record_step(
        self, step: int, *, loss: float, learning_rate: float, tokens_per_second: float
    ) -> None:
        """One logged optimizer step (called by the loop, rank 0)."""
        if not self.enabled:
            return
        self.series["loss"].add(step, loss)
        self.series["learning_rate"].add(step, learning_rate)
        self.series["tokens_per_second"].add(step, tokens_per_second)
        if math.isfinite(loss) and (self.best_loss is None or loss < self.best_loss[1]):
            self.best_loss = (step, float(loss))

    def record_eval(self, step: int, loss: float, model: str) -> None:
        """An evaluation of the base (before training) or the tuned model."""
        if not self.enabled:
            return
        self.evals.append({"step": int(step), "loss": _finite(loss), "model": model})
        del self.evals[: max(0, len(self.evals) - self.max_points)]

    # ------------------------------------------------------------ checkpointing
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "maxPoints": self.max_points,
            "series": {name: s.to_dict() for name, s in self.series.items()},
            "evals": self.evals,
            "restarts": self.restarts,
            "bestLoss": list(self.best_loss) if self.best_loss else None,
        }

    def save(self, directory: Path) -> None:
        """Into a checkpoint's staging directory (committed atomically with it)."""
        if not self.enabled:
            return
        try:
            (directory / CHECKPOINT_FILE).write_text(json.dumps(self.to_dict()))
        except (OSError, TypeError, ValueError) as exc:
            log.warning("training curves not saved with the checkpoint: %s", exc)

    def load(self, directory: Path, step: int) -> bool:
        """Continue the curves saved with the checkpoint of ``step`` (a resume)."""
        if not self.enabled:
            return False
        path = directory / CHECKPOINT_FILE
        try:
            if path.exists():
                data = json.loads(path.read_text())
                if data.get("format") != FORMAT:
                    raise ValueError(f"unknown format {data.get('format')!r}")
                series = {
                    name: Series.from_dict(data["series"][name], self.max_points)
                    for name in STEP_SERIES
                }
                for s in series.values():
                    s.truncate(step)
                evals = [dict(e) for e in data.get("evals", []) if int(e["step"]) <= step]
                restarts = [int(r) for r in data.get("restarts", []) if int(r) <= step]
                best = data.get("bestLoss")
                self.series, self.evals, self.restarts = series, evals, restarts
                if best and int(best[0]) <= step:
                    self.best_loss = (int(best[0]), float(best[1]))
                loaded = True
            else:
                log.info(
                    "checkpoint %s has no training curves; they start at the resume", directory
                )
                loaded = False
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            log.warning("ignoring the training curves of %s (%s)", directory, exc)
            loaded = False
        self.restarts.append(int(step))
        return loaded

    # ------------------------------------------------------------------ summary
    def summary(self) -> dict[str, Any]:
        """Final and best figures for the model card (exact where it matters)."""
        steps, losses = self.series["loss"].points()
        _, lrs = self.series["learning_rate"].points()
        _, tps = self.series["tokens_per_second"].points()
        finite_tps = [v for v in tps if v is not None and v > 0]
        final = next(
            (
                (s, v)
                for s, v in zip(reversed(steps), reversed(losses), strict=True)
                if v is not None
            ),
            None,
        )
        tuned = [e for e in self.evals if e["model"] == "tuned" and e["loss"] is not None]
        base = [e for e in self.evals if e["model"] == "base" and e["loss"] is not None]
        evals = [e for e in self.evals if e["loss"] is not None]
        best_eval = min(evals, key=lambda e: e["loss"]) if evals else None
        return {
            "stepsRecorded": self.series["loss"].recorded,
            "finalLoss": {"step": final[0], "value": final[1]} if final else None,
            "bestLoss": (
                {"step": self.best_loss[0], "value": self.best_loss[1]} if self.best_loss else None
            ),
            "baseEvalLoss": base[0]["loss"] if base else None,
            "finalEvalLoss": tuned[-1]["loss"] if tuned else None,
            "bestEvalLoss": (
                {"step": best_eval["step"], "value": best_eval["loss"], "model": best_eval["model"]}
                if best_eval
                else None
            ),
            "finalLearningRate": next((v for v in reversed(lrs) if v is not None), None),
            "medianTokensPerSecond": statistics.median(finite_tps) if finite_tps else None,
            "peakTokensPerSecond": max(finite_tps) if finite_tps else None,
            "restarts": list(self.restarts),
        }

    def document(self) -> dict[str, Any]:
        """``training_curves.json``: every kept point of every series, and the summary."""
        series: dict[str, Any] = {}
        for name, s in self.series.items():
            steps, values = s.points()
            series[name] = {"steps": steps, "values": values, "recorded": s.recorded}
        return {
            "format": FORMAT,
            "maxPoints": self.max_points,
            "units": {
                "loss": "mean loss per target token (pair for preference methods)",
                "learning_rate": "learning rate",
                "tokens_per_second": "non-padding tokens per second, all ranks",
            },
            "series": series,
            "evals": self.evals,
            "restarts": self.restarts,
            "summary": self.summary(),
        }


# ------------------------------------------------------------------------ drawing
def render_png(document: dict[str, Any], title: str = "") -> bytes:
    """The 2x2 picture of ``document`` (:meth:`CurveRecorder.document`) as PNG bytes.

    Uses matplotlib's object API on an Agg canvas: no pyplot state, no display, safe in a
    process that also serves metrics from a thread.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = document["series"]
    restarts = document.get("restarts", [])
    figure = Figure(figsize=FIG_SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    (ax_loss, ax_eval), (ax_lr, ax_tps) = figure.subplots(2, 2, sharex=True)

    def line(ax: Any, name: str, **style: Any) -> tuple[list[int], list[float]]:
        pts = [
            (s, v)
            for s, v in zip(series[name]["steps"], series[name]["values"], strict=True)
            if v is not None
        ]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        if xs:
            ax.plot(xs, ys, **style)
        return xs, ys

    line(ax_loss, "loss", color="tab:blue", linewidth=1.2, label="training loss")
    ax_loss.set_title("Training loss")
    ax_loss.set_ylabel("loss (mean per target token)")

    line(ax_eval, "loss", color="tab:blue", linewidth=0.8, alpha=0.35, label="training loss")
    for model, marker, color in (("base", "s", "tab:gray"), ("tuned", "o", "tab:red")):
        pts = [
            e for e in document.get("evals", []) if e["model"] == model and e["loss"] is not None
        ]
        if pts:
            ax_eval.plot(
                [e["step"] for e in pts],
                [e["loss"] for e in pts],
                linestyle="none",
                marker=marker,
                markersize=8,
                color=color,
                label=f"eval loss, {model} model",
            )
            last = pts[-1]
            ax_eval.annotate(
                f"{last['loss']:.4g}",
                (last["step"], last["loss"]),
                textcoords="offset points",
                xytext=(6, 6),
                fontsize=8,
            )
    ax_eval.set_title("Evaluation loss (markers) over training loss")
    ax_eval.set_ylabel("loss (mean per target token)")
    if not document.get("evals"):
        ax_eval.text(
            0.5, 0.5, "no evaluation set", transform=ax_eval.transAxes, ha="center", alpha=0.6
        )

    line(ax_lr, "learning_rate", color="tab:green", linewidth=1.2)
    ax_lr.set_title("Learning rate")
    ax_lr.set_ylabel("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))

    _, tps = line(ax_tps, "tokens_per_second", color="tab:purple", linewidth=0.8, alpha=0.8)
    if tps:
        median = statistics.median(tps)
        ax_tps.axhline(
            median,
            color="black",
            linestyle=":",
            linewidth=1,
            label=f"median {median:,.0f} tokens/s",
        )
        ax_tps.set_ylim(bottom=0)
    ax_tps.set_title("Throughput")
    ax_tps.set_ylabel("tokens/s (non-padding, all ranks)")

    for ax in (ax_loss, ax_eval, ax_lr, ax_tps):
        for i, step in enumerate(restarts):
            ax.axvline(
                step,
                color="tab:orange",
                linestyle="--",
                linewidth=1,
                label="resumed from checkpoint" if i == 0 else None,
            )
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    for ax in (ax_lr, ax_tps):
        ax.set_xlabel("optimizer step")
    if title:
        figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def write_curves(
    recorder: CurveRecorder | None, out: Path, title: str = ""
) -> dict[str, Any] | None:
    """Write ``training_curves.json`` and ``training_curves.png`` into ``out`` (rank 0).

    Returns what the lineage and model card record (file names, summary), with
    ``image: None`` when drawing failed; None when no step was recorded. Never raises:
    the picture is a convenience, never a reason to lose a trained model.
    """
    if recorder is None or not recorder.enabled or recorder.series["loss"].recorded == 0:
        return None  # nothing to draw (e.g. a run that failed before its first step)
    try:
        document = recorder.document()
        write_atomic(out / CURVES_JSON, json.dumps(document, indent=1))
    except Exception as exc:  # nothing here may fail the run
        log.warning("training curves not written: %s", exc, exc_info=True)
        return None
    info: dict[str, Any] = {"data": CURVES_JSON, "image": None, "summary": document["summary"]}
    try:
        write_atomic(out / CURVES_PNG, render_png(document, title))
        info["image"] = CURVES_PNG
    except Exception as exc:  # a plotting error is logged, the run goes on
        log.warning("training curves picture not drawn: %s", exc, exc_info=True)
    return info
