"""From the validation pod's termination message to ``status.plan`` and FitsGPUMemory.

The validation pod estimates peak GPU memory per process from the model's config.json
(``kubetune.plan``, the same code as ``kubetune plan``) and appends the estimate to its
termination message (``kubetune.contract.plan``). A job that will not fit is warned
about -- a Warning Event and ``FitsGPUMemory=False`` with the estimate and what to
change -- but not failed: the figure is an estimate, and the GPUs may be larger than the
nodeSelector says.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetune.api.status import ResourcePlan
from kubetune.contract.plan import PlanSummary, parse_plan, warning_message
from kubetune_operator.plan import EventType
from kubetune_operator.reasons import Reason
from kubetune_operator.status import ConditionStatus


@dataclass(frozen=True)
class PlanOutcome:
    """What the operator records once validation passed with an estimate."""

    status: ResourcePlan
    condition: ConditionStatus
    reason: Reason
    message: str
    event: tuple[EventType, str, str] | None = None


def to_status(summary: PlanSummary) -> ResourcePlan:
    return ResourcePlan(
        peak_memory_bytes=summary.peak_memory_bytes,
        memory_bytes={k[:64]: v for k, v in list(summary.memory_bytes.items())[:16]} or None,
        gpu=summary.gpu[:128] if summary.gpu else None,
        gpu_memory_bytes=summary.gpu_memory_bytes,
        fit=summary.fit,
        setup=summary.setup[:512] or None,
        tokens_per_epoch=summary.tokens_per_epoch,
        tokens_per_second=summary.tokens_per_second,
        throughput=summary.throughput[:256] if summary.throughput else None,
        epoch_seconds=summary.epoch_seconds,
        suggestions=[s[:256] for s in summary.suggestions[:5]] or None,
    )


def outcome(message: str | None) -> PlanOutcome | None:
    """The plan in a validation pod's termination message; None when it has none."""
    summary = parse_plan(message)
    if summary is None:
        return None
    gib = summary.peak_memory_bytes / 2**30
    peak = f"estimated peak memory {gib:.1f} GiB per GPU"
    status = to_status(summary)
    if summary.fit == "DoesNotFit":
        text = warning_message(summary)
        return PlanOutcome(
            status,
            "False",
            Reason.EXCEEDS_GPU_MEMORY,
            text,
            ("Warning", Reason.EXCEEDS_GPU_MEMORY, text),
        )
    gpu = f"{summary.gpu} ({(summary.gpu_memory_bytes or 0) / 2**30:.0f} GiB)"
    if summary.fit == "Tight":
        text = f"{peak}: within 10% of {gpu}; the allocator's fragmentation may not fit"
        return PlanOutcome(status, "True", Reason.TIGHT_GPU_MEMORY, text)
    if summary.fit == "Fits":
        return PlanOutcome(status, "True", Reason.FITS_GPU_MEMORY, f"{peak}: fits {gpu}")
    return PlanOutcome(
        status,
        "Unknown",
        Reason.GPU_TYPE_UNKNOWN,
        f"{peak}; name the GPU product in resources.nodeSelector (nvidia.com/gpu.product) "
        "to compare",
    )
