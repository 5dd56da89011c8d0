"""The rank-0 progress document: the trainer writes it, the operator reads it.

Served as JSON on the trainer's metrics port at ``/progress`` and mirrored to a file,
so the operator can follow training without training pods having any API rights.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class ProgressDocument(BaseModel):
    """A snapshot of training progress on rank 0."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    state: Literal[
        "validating", "loading", "training", "evaluating", "saving", "done", "failed"
    ] = "loading"
    step: int = Field(default=0, ge=0)
    total_steps: int = Field(default=0, ge=0)
    epoch: float = Field(default=0.0, ge=0)
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    last_checkpoint_step: int | None = None
    last_checkpoint_path: str | None = None
    # Added for the trainer (all optional, so older readers and writers stay valid):
    samples_per_second: float | None = None
    grad_norm: float | None = None
    skipped_rows: int | None = Field(default=None, ge=0)
    truncated_rows: int | None = Field(default=None, ge=0)
    message: str | None = None
    #: reward-hacking guard findings of online RL, newest last
    warnings: list[str] | None = None
    #: the checkpoint step this attempt resumed from (None: it started from the base model)
    resumed_from_step: int | None = Field(default=None, ge=0)
    #: differential privacy: epsilon spent so far, and the budget (spec.differentialPrivacy)
    dp_epsilon: float | None = None
    dp_target_epsilon: float | None = None
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def percent(self) -> int:
        if self.total_steps <= 0:
            return 0
        return min(100, int(100 * self.step / self.total_steps))

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)
