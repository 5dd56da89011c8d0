"""Join the gang, train, leave the gang."""

from __future__ import annotations

from kubetune.api.resolve import ResolvedJob
from kubetune.contract import TrainerPaths
from kubetune_trainer.trainer import RunResult, Trainer


def run_training(job: ResolvedJob, paths: TrainerPaths) -> RunResult:
    with Trainer(job, paths) as trainer:
        return trainer.run()
