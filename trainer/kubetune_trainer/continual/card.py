"""The model card's continual-learning section: forgetting of every protected task next
to the new task's gain, so a reader sees what the new skill cost the old ones."""

from __future__ import annotations

import math
from typing import Any


def _f(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:+.4f}" if value else "0.0000"
    return "n/a"


def _v(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "n/a"


def continual_section(doc: dict[str, Any] | None) -> str:
    """Markdown for ``eval_results["continual"]`` (empty without spec.continual)."""
    if not doc:
        return ""
    lines = [
        "### Continual learning",
        "",
        "Eval loss (per target token) of each protected task before and after training; "
        "forgetting = after - before (lower is better), and the new task's gain = base - "
        "tuned on its eval split.",
        "",
        "| task | eval loss before | eval loss after | change |",
        "| --- | --- | --- | --- |",
    ]
    for task in doc.get("protectedTasks", []):
        lines.append(
            f"| {task['name']} (protected, forgetting) | {_v(task.get('lossBefore'))} "
            f"| {_v(task.get('lossAfter'))} | {_f(task.get('forgetting'))} |"
        )
    new = doc.get("newTask") or {}
    if new:
        lines.append(
            f"| new task (gain) | {_v(new.get('lossBase'))} | {_v(new.get('lossTuned'))} "
            f"| {_f(new.get('gain'))} |"
        )
    replay = doc.get("replay") or {}
    reg = doc.get("regularizer")
    how = [f"replay ratio {replay.get('ratio', 0.0):g} ({replay.get('rows', 0)} protected rows)"]
    if reg:
        penalty = reg.get("finalPenalty")
        how.append(
            f"{reg['type']} strength {reg['strength']:g}, final penalty "
            f"{_v(penalty) if isinstance(penalty, float) else 'n/a'}"
            + (f", mean Fisher {reg['fisherMean']:.3g}" if "fisherMean" in reg else "")
        )
    else:
        how.append("no regularizer")
    lines += ["", "Protection: " + "; ".join(how) + ".", ""]
    return "\n".join(lines) + "\n"
