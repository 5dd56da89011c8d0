"""The model card's differential-privacy section: the guarantee the weights carry."""

from __future__ import annotations

from typing import Any


def privacy_section(doc: dict[str, Any] | None) -> str:
    """Markdown for ``lineage["differentialPrivacy"]`` (empty without it)."""
    if not doc:
        return ""
    sigma = f"{doc['noiseMultiplier']:.4g}" + (
        " (computed from the target)" if doc.get("noiseMultiplierComputed") else ""
    )
    rows = [
        ("epsilon spent", f"{doc['epsilonSpent']:.4g}"),
        ("target epsilon", f"{doc['targetEpsilon']:g}"),
        ("delta", f"{doc['delta']:.3g}"),
        ("noise multiplier", sigma),
        ("clip norm (per row)", f"{doc['maxGradNorm']:g}"),
        (
            "sampling",
            f"Poisson, rate {doc['sampleRate']:.4g} (expected "
            f"{doc['expectedBatchSize']:.4g} of {doc['trainingRows']} rows per step)",
        ),
        ("steps", f"{doc['steps']} of {doc['plannedSteps']} planned"),
        ("accountant", str(doc["accountant"]).upper() + " (Opacus)"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (
        "## Differential privacy\n\n"
        f"Trained with DP-SGD: the weights are ({doc['epsilonSpent']:.3g}, "
        f"{doc['delta']:.3g})-differentially private with respect to any one training row "
        "(every row's gradient clipped, Gaussian noise added to each step).\n\n"
        "| | |\n| --- | --- |\n" + table + "\n\n"
    )
