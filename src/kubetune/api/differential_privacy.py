"""Differential privacy: DP-SGD training with a privacy budget (``spec.differentialPrivacy``).

Each optimizer step samples its rows by Poisson sampling (every training row joins the
step independently with probability q = globalBatchSize / N), computes every row's
gradient on its own, clips it to ``maxGradNorm`` (L2 over all trainable parameters),
sums the clipped gradients, adds Gaussian noise of standard deviation
``noiseMultiplier x maxGradNorm`` once, and divides by the expected batch size. A Rényi
DP (or PRV) accountant for the Poisson-subsampled Gaussian mechanism turns (q, noise
multiplier, steps) into the epsilon spent at ``delta``; training stops with a
checkpoint before a step would take it over ``targetEpsilon``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from kubetune.api.base import ApiModel, cel
from kubetune.api.methods import SFT_FORMATS, cel_list

#: methods DP-SGD supports: a per-token language-modelling loss over trainable weights of
#: one model (no reference model, no reward model, no virtual-token tables)
DP_METHODS: tuple[str, ...] = ("full", "lora")
#: the delta used when the spec leaves it unset is min(DEFAULT_DELTA, 1 / (10 N)) for N
#: training rows: delta must be well below 1/N to mean anything
DEFAULT_DELTA = 1.0e-5
DEFAULT_MAX_GRAD_NORM = 1.0
DP_ACCOUNTANTS = ("rdp", "prv")


class DifferentialPrivacySpec(ApiModel):
    """DP-SGD: per-row gradient clipping, Gaussian noise, and an (epsilon, delta) budget."""

    target_epsilon: float = Field(
        gt=0.0,
        le=100.0,
        description="The privacy budget epsilon the whole run may spend (at delta). "
        "Validation refuses a job whose planned steps would spend more; training stops with "
        "a checkpoint (exit code 78, InvalidConfig: not retried) before a step would exceed it.",
    )
    delta: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0e-2,
        description="delta of the (epsilon, delta) guarantee. Default: min(1e-5, 1/(10 N)) "
        "for N training rows. Must be below 1/N (validation refuses it otherwise).",
    )
    max_grad_norm: float = Field(
        default=DEFAULT_MAX_GRAD_NORM,
        gt=0.0,
        le=1.0e4,
        description="C: every row's gradient (L2 over all trainable parameters) is scaled "
        "down to at most this norm before the rows are summed; the noise is C x "
        "noiseMultiplier. Replaces hyperparameters.maxGradNorm for this job.",
    )
    noise_multiplier: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0e3,
        description="sigma: the noise's standard deviation over maxGradNorm. Default: the "
        "smallest sigma whose planned steps stay within targetEpsilon (computed from the "
        "sampling rate globalBatchSize / N, the planned steps and delta).",
    )
    accountant: Literal["rdp", "prv"] = Field(
        default="rdp",
        description="Privacy accountant of the Poisson-subsampled Gaussian mechanism: rdp "
        "(Rényi DP, Mironov et al.) or prv (privacy random variables, Gopi et al.; "
        "tighter). Both as implemented by Opacus.",
    )


def privacy_rules() -> list[dict[str, Any]]:
    """CEL rules of FineTuneJobSpec that involve ``differentialPrivacy``."""
    has = "!has(self.differentialPrivacy) || "
    return [
        cel(
            f"{has}self.method in {cel_list(DP_METHODS)}",
            "differentialPrivacy applies only to methods full and lora: per-row gradients "
            "are computed for one model's per-token loss (preference, RL, reward, qlora and "
            "virtual-token methods are not supported)",
            field_path=".differentialPrivacy",
        ),
        cel(
            f"{has}self.dataset.format in {cel_list(SFT_FORMATS)}",
            "differentialPrivacy needs a text dataset.format (" + ", ".join(SFT_FORMATS) + ")",
            field_path=".differentialPrivacy",
        ),
        cel(
            f"{has}!has(self.dataset.packing) || !self.dataset.packing",
            "differentialPrivacy needs one training row per sequence: dataset.packing would "
            "mix rows in one sequence, so no row's contribution could be clipped on its own",
            field_path=".dataset.packing",
        ),
        cel(
            f"{has}self.distributed.strategy == 'ddp'",
            "differentialPrivacy needs distributed.strategy ddp on a single process: fsdp "
            "and deepspeed shard the gradients that are clipped per row",
            field_path=".distributed.strategy",
        ),
        cel(
            f"{has}self.resources.nodes * self.resources.gpusPerNode == 1",
            "differentialPrivacy runs on one GPU (nodes x gpusPerNode = 1): the noise must "
            "be added once per step to the sum of every row's clipped gradient, which this "
            "version does not do across processes",
            field_path=".resources.gpusPerNode",
        ),
        cel(
            f"{has}!has(self.hyperparameters.precision) || "
            "self.hyperparameters.precision != 'fp16'",
            "differentialPrivacy does not support precision fp16 (loss scaling would scale "
            "the clipped gradients); use bf16, fp32 or auto",
            field_path=".hyperparameters.precision",
        ),
        cel(
            f"{has}!has(self.continual)",
            "differentialPrivacy and continual cannot be combined: replayed rows and the "
            "regularizer's penalty are outside the per-row accounting",
            field_path=".continual",
        ),
        cel(
            f"{has}!has(self.moe)",
            "differentialPrivacy and moe cannot be combined: the load-balancing loss couples "
            "the rows of a batch",
            field_path=".moe",
        ),
        cel(
            "has(self.differentialPrivacy) == has(oldSelf.differentialPrivacy) && "
            "(!has(self.differentialPrivacy) || "
            "self.differentialPrivacy == oldSelf.differentialPrivacy)",
            "differentialPrivacy cannot change after creation; create a new FineTuneJob instead",
            field_path=".differentialPrivacy",
        ),
    ]
