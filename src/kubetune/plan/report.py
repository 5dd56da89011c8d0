"""One plan: the estimate, the verdict against the GPU, the time and the advice."""

from __future__ import annotations

from dataclasses import dataclass, field

from kubetune.api.resolve import ResolvedJob
from kubetune.contract.plan import FitVerdict, PlanSummary
from kubetune.plan.advice import Fit, Suggestion, fit, smallest_fitting_gpu, suggest
from kubetune.plan.gpus import GIB, GpuType, gpu_from_selector
from kubetune.plan.memory import MemoryEstimate, estimate_memory
from kubetune.plan.setup import TrainingSetup, setup_from_job
from kubetune.plan.shape import ModelShape
from kubetune.plan.timing import Throughput, throughput

_VERDICTS: dict[Fit, FitVerdict] = {"fits": "Fits", "tight": "Tight", "does not fit": "DoesNotFit"}


@dataclass(frozen=True)
class Plan:
    shape: ModelShape
    setup: TrainingSetup
    memory: MemoryEstimate
    gpu: GpuType | None
    fit: Fit | None
    suggestions: list[Suggestion] = field(default_factory=list)
    smallest_gpu: GpuType | None = None
    throughput: Throughput | None = None
    tokens_per_epoch: int | None = None
    tokens_source: str = ""
    epochs: float | None = None

    @property
    def epoch_seconds(self) -> float | None:
        if self.throughput is None or not self.tokens_per_epoch:
            return None
        rate = self.throughput.tokens_per_second_per_gpu * self.setup.world_size
        return self.tokens_per_epoch / rate if rate > 0 else None

    def headline(self) -> str:
        """One sentence: the peak, the GPU and the verdict."""
        peak = f"{self.memory.peak_bytes / GIB:.1f} GiB"
        if self.gpu is None or self.fit is None:
            return f"estimated peak memory {peak} per GPU (GPU type unknown)"
        return f"estimated peak memory {peak} per GPU; {self.gpu.describe()}: {self.fit}"

    def summary(self) -> PlanSummary:
        """The compact form the operator stores in ``status.plan``."""
        return PlanSummary(
            peak_memory_bytes=self.memory.peak_bytes,
            memory_bytes={p.name: p.bytes for p in self.memory.parts},
            gpu=self.gpu.name if self.gpu else None,
            gpu_memory_bytes=self.gpu.memory_bytes if self.gpu else None,
            fit=_VERDICTS[self.fit] if self.fit else "Unknown",
            setup=self.setup.describe(),
            tokens_per_epoch=self.tokens_per_epoch,
            tokens_per_second=(
                round(self.throughput.tokens_per_second_per_gpu * self.setup.world_size, 1)
                if self.throughput
                else None
            ),
            throughput=self.throughput.how if self.throughput else None,
            epoch_seconds=round(self.epoch_seconds, 3) if self.epoch_seconds else None,
            suggestions=[describe_suggestion(s) for s in self.suggestions],
        )


def describe_suggestion(s: Suggestion) -> str:
    return f"{s.change}: {s.estimate.peak_bytes / GIB:.1f} GiB ({s.fit})"


def make_plan(
    job: ResolvedJob,
    shape: ModelShape,
    *,
    gpu: GpuType | None = None,
    tokens_per_second: float | None = None,
    mfu: float | None = None,
    tokens_per_epoch: int | None = None,
    tokens_source: str = "",
    loss_token_fraction: float = 1.0,
) -> Plan:
    """Plan ``job`` on ``gpu`` (default: the one its nodeSelector names)."""
    gpu = gpu or gpu_from_selector(job.spec.resources.node_selector)
    setup = setup_from_job(job, bf16_supported=gpu.bf16 if gpu else True)
    memory = estimate_memory(shape, setup, loss_token_fraction=loss_token_fraction)
    verdict = fit(memory.peak_bytes, gpu) if gpu and gpu.memory_bytes else None
    advice = (
        suggest(shape, setup, gpu, loss_token_fraction=loss_token_fraction)
        if gpu and verdict != "fits"
        else []
    )
    return Plan(
        shape=shape,
        setup=setup,
        memory=memory,
        gpu=gpu,
        fit=verdict,
        suggestions=advice,
        smallest_gpu=smallest_fitting_gpu(shape, setup) if gpu is None else None,
        throughput=throughput(shape, setup, gpu, tokens_per_second=tokens_per_second, mfu=mfu),
        tokens_per_epoch=tokens_per_epoch,
        tokens_source=tokens_source,
        epochs=job.spec.hyperparameters.epochs,
    )
