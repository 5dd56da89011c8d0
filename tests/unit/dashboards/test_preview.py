"""The dashboard preview image: one plot per panel, written as a real PNG."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from tests.observability.dashboard_preview import render_preview


def _synthetic() -> dict[str, list[tuple[str, list[tuple[float, float]]]]]:
    t0 = 1_700_000_000.0
    times = [t0 + 15 * i for i in range(40)]
    return {
        "Training loss": [
            ("loss", [(t, 3.0 * math.exp(-i / 15) + 0.5) for i, t in enumerate(times)])
        ],
        "Tokens per second": [
            ("reported", [(t, 1200 + 30 * math.sin(i)) for i, t in enumerate(times)]),
            ("counter rate", [(t, 1180.0) for t in times]),
        ],
        "Eval loss": [("base", [(times[0], 3.4)]), ("tuned", [(times[-1], 0.9)])],
        "Accelerator memory peak": [],
    }


def test_preview_is_a_non_trivial_png(tmp_path: Path) -> None:
    path = render_preview(
        _synthetic(),
        tmp_path / "out" / "job.png",
        title="kubetune / FineTuneJob",
        units={"Tokens per second": "tokens/s"},
    )
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000
    pixels = image.imread(path)
    height, width = pixels.shape[:2]
    assert width >= 3 * 400 and height >= 2 * 250  # a 3 x 2 grid
    assert np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0).shape[0] > 50


def test_more_panels_make_a_taller_grid(tmp_path: Path) -> None:
    small = image.imread(render_preview(_synthetic(), tmp_path / "a.png", columns=2))
    panels = {f"{name} {i}": series for i in range(3) for name, series in _synthetic().items()}
    large = image.imread(render_preview(panels, tmp_path / "b.png", columns=2))
    assert large.shape[0] > 2 * small.shape[0]


def test_nothing_to_draw_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        render_preview({}, tmp_path / "x.png")
