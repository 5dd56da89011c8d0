"""``docs/metrics.md``: the metrics contract as a page for people.

Generated (``kubetune docs metrics``, run by ``make crd``) and checked for drift like the
CRD (``make crd-check``), so the page is never older than the code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from kubetune.contract.metrics import (
    OPERATOR_METRICS,
    OPERATOR_SCRAPE_JOB,
    ROLLOUT_METRICS,
    SCRAPE_LABELS,
    TRAINER_METRICS,
    TRAINER_SCRAPE_JOB,
    MetricSpec,
)

METRICS_DOC: Final = Path("docs/metrics.md")

_HEADER = f"""\
<!-- Generated from src/kubetune/contract/metrics.py by `kubetune docs metrics`; do not edit. -->
# Metrics

Every metric the trainer and the operator export, as exposed on `/metrics`. The list
lives once, in `src/kubetune/contract/metrics.py`: both components build their collectors
from it, and a unit test holds it to the Prometheus naming rules (base units `_seconds`,
`_bytes`, `_ratio` for 0-1; `_total` on counters; bounded labels only, never a pod, step,
rank, attempt, IP or UID).

- **Trainer**: rank 0 serves `/metrics` on the metrics port (scrape job `{TRAINER_SCRAPE_JOB}`).
  `kubetune run --local` also leaves the last exposition in `outputs/metrics.prom`.
- **Operator**: every replica serves `/metrics` (scrape job `{OPERATOR_SCRAPE_JOB}`); only the
  leader's job-level series move. `up{{job="{OPERATOR_SCRAPE_JOB}"}}` is the operator-down
  signal.

## Labels added at scrape time

Prometheus attaches these by relabeling; the components never set them.

| label | meaning |
| --- | --- |
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(specs: tuple[MetricSpec, ...]) -> list[str]:
    rows = ["| name | type | unit | labels | meaning |", "| --- | --- | --- | --- | --- |"]
    for spec in specs:
        labels = "<br>".join(f"`{label.name}`: {_cell(label.meaning)}" for label in spec.labels)
        rows.append(
            f"| `{spec.name}` | {spec.type} | {spec.unit or '-'} | {labels or '-'} "
            f"| {_cell(spec.help)} |"
        )
    return rows


def render_metrics_doc() -> str:
    """The whole page (deterministic: the same contract gives the same bytes)."""
    lines = [_HEADER.rstrip("\n")]
    lines += [f"| `{name}` | {_cell(meaning)} |" for name, meaning in SCRAPE_LABELS.items()]
    lines += ["", "## Trainer", "", *_table(TRAINER_METRICS)]
    lines += ["", "## Operator", "", *_table(OPERATOR_METRICS)]
    lines += ["", "## Rollouts (operator)", "", *_table(ROLLOUT_METRICS)]
    lines += [
        "",
        "Histograms expose `<name>_bucket{le}`, `<name>_sum` and `<name>_count`; the info "
        "metric is always 1 and carries its values as labels.",
    ]
    return "\n".join(lines) + "\n"
