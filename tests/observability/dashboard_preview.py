"""A preview image of a dashboard's panels from query results, for reviewers.

The end-to-end test evaluates every panel query against a real Prometheus; this turns the
results into one PNG (a grid of small time-series plots, one per panel) kept as a test
artifact, so a person can see what the dashboard would show without a Grafana.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global state, no display).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

#: {panel_title: [(legend, [(unix_seconds, value), ...]), ...]}
PanelResults = Mapping[str, Sequence[tuple[str, Sequence[tuple[float, float]]]]]

_MAX_LEGEND_ENTRIES = 6


def render_preview(
    results: PanelResults,
    path: Path | str,
    *,
    title: str = "",
    columns: int = 3,
    units: Mapping[str, str] | None = None,
) -> Path:
    """Draw one small plot per panel of ``results`` (in the mapping's order) into ``path``.

    Times are shown in minutes from the earliest sample of all panels, so panels line up.
    A panel without samples says "no data" instead of silently showing empty axes;
    ``units`` (panel title -> unit) labels the y axes. Returns ``path``.
    """
    if not results:
        raise ValueError("no panels to draw")
    path = Path(path)
    columns = max(1, min(columns, len(results)))
    rows = math.ceil(len(results) / columns)
    starts = [t for series in results.values() for _, points in series for t, _ in points[:1]]
    origin = min(starts, default=0.0)

    figure = Figure(figsize=(4.2 * columns, 2.8 * rows + (0.5 if title else 0)), dpi=100)
    if title:
        figure.suptitle(title, fontsize=13)
    axes_grid = figure.subplots(rows, columns, squeeze=False)
    for index, (panel_title, series) in enumerate(results.items()):
        axes = axes_grid[index // columns][index % columns]
        axes.set_title(panel_title, fontsize=9)
        axes.tick_params(labelsize=7)
        drawn = 0
        for legend, points in series:
            if not points:
                continue
            times = [(t - origin) / 60 for t, _ in points]
            values = [v for _, v in points]
            style = "o-" if len(points) < 3 else "-"
            axes.plot(times, values, style, linewidth=1.2, markersize=3, label=legend or None)
            drawn += 1
        if drawn == 0:
            axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
            axes.set_xticks([])
            axes.set_yticks([])
            continue
        axes.set_xlabel("minutes", fontsize=7)
        if units and units.get(panel_title):
            axes.set_ylabel(units[panel_title], fontsize=7)
        axes.grid(True, alpha=0.3)
        if any(legend for legend, _ in series) and drawn <= _MAX_LEGEND_ENTRIES:
            axes.legend(fontsize=6, loc="best")
    for index in range(len(results), rows * columns):
        axes_grid[index // columns][index % columns].set_visible(False)
    # Leave room for the title above the grid.
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.4 / figure.get_figheight() if title else 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
