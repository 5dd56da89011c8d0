"""The training loop's continual-learning hooks (``spec.continual``), in call order:

``add_replay`` (after the data is read: protected rows join the training units),
``prepare`` (before the first step: eval loss of every protected task, theta* and the
Fisher estimate), ``penalty`` (once per optimizer step, added to the last micro-batch's
loss), ``save_state``/``load_state`` (checkpoints) and ``finish`` (after training: eval
loss again, forgetting, and the new task's gain for eval_results.json and the card).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from kubetune.api.continual import DEFAULT_FISHER_SAMPLES
from kubetune.api.resolve import ResolvedJob
from kubetune_trainer.continual.data import (
    ProtectedData,
    add_replay,
    fisher_examples,
)
from kubetune_trainer.continual.penalty import Anchor, estimate_fisher, trainable
from kubetune_trainer.data.encode import Encoded
from kubetune_trainer.data.validate import PreparedData
from kubetune_trainer.distributed.env import DistEnv, all_reduce_sum
from kubetune_trainer.distributed.precision import autocast
from kubetune_trainer.distributed.strategy import Engine, LocalEngine
from kubetune_trainer.errors import InvalidConfigError
from kubetune_trainer.methods.base import MakeBatch, Method

log = logging.getLogger("kubetune.trainer.continual")

STATE_JSON = "continual.json"
Evaluate = Callable[[list[Encoded]], dict[str, float]]


class ContinualLearning:
    """One rank's continual-learning state for a job with ``spec.continual``."""

    def __init__(self, job: ResolvedJob, env: DistEnv) -> None:
        assert job.spec.continual is not None
        self.job = job
        self.spec = job.spec.continual
        self.env = env
        self.tasks: list[ProtectedData] = []
        self.replayed = 0
        self.before: dict[str, float] | None = None
        self.anchor: Anchor | None = None
        self.last_penalty: float | None = None
        self._resume_dir: Path | None = None

    @classmethod
    def create(cls, job: ResolvedJob, env: DistEnv) -> ContinualLearning | None:
        return cls(job, env) if job.spec.continual is not None else None

    # ------------------------------------------------------------------ data
    def add_replay(self, tokenizer: Any, data: PreparedData) -> None:
        """Read the protected tasks; append the replayed rows to the training units."""
        before = len(data.train.examples)
        self.tasks = add_replay(self.job, tokenizer, data)
        self.replayed = len(data.train.examples) - before
        if self.replayed:
            log.info("replay: %d protected rows join %d new rows", self.replayed, before)

    # --------------------------------------------------------------- prepare
    def prepare(self, engine: Engine, method: Method, batch: MakeBatch, evaluate: Evaluate) -> None:
        """Before the first step (after a resume): the starting point of everything."""
        if self.before is None:
            self.before = {t.name: evaluate(t.eval)["loss"] for t in self.tasks}
            log.info("protected tasks' eval loss before training: %s", self.before)
        reg = self.spec.regularizer
        if reg is None:
            return
        if not isinstance(engine, LocalEngine):
            raise InvalidConfigError("continual.regularizer needs distributed.strategy ddp")
        params = trainable(engine.unwrapped)
        self.anchor = Anchor.snapshot(reg.type, reg.strength, params)
        if self._resume_dir is not None:
            self.anchor.load(self._resume_dir, self.env.device)
            return
        if reg.type == "ewc":
            samples = reg.fisher_samples or DEFAULT_FISHER_SAMPLES
            rows = fisher_examples(self.tasks, samples, self.job.spec.hyperparameters.seed)
            self.anchor.fisher = self._fisher(engine, method, batch, params, rows)
            log.info("ewc: Fisher from %d rows: %s", len(rows), self.anchor.fisher_summary())

    def _fisher(
        self,
        engine: Engine,
        method: Method,
        batch: MakeBatch,
        params: dict[str, torch.nn.Parameter],
        rows: list[Encoded],
    ) -> dict[str, torch.Tensor]:
        """Per-row gradients of the unwrapped model (no DDP hooks), rows sharded by rank."""
        env = self.env

        def forward(**kwargs: Any) -> Any:
            with autocast(engine.precision, env.device, enabled=engine.uses_autocast):
                return engine.unwrapped(**kwargs)

        mine = list(range(env.rank, len(rows), env.world_size))
        used = 0

        def losses() -> Any:
            nonlocal used
            for index in mine:
                out = method.loss(forward, engine.unwrapped, batch(rows, [index], "eval"))
                if out.count > 0:
                    used += 1
                    yield out.loss_sum / out.count

        def reduce(tensors: list[torch.Tensor]) -> None:
            if env.distributed:
                for tensor in tensors:
                    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

        engine.eval()  # no dropout: the estimate is a property of theta*, not of noise
        try:
            sums = estimate_fisher(params, losses(), 1, reduce)
        finally:
            engine.train()
        (total,) = all_reduce_sum([float(used)], env)
        return {n: s / max(total, 1.0) for n, s in sums.items()}

    # ------------------------------------------------------------------ step
    def penalty(self, engine: Engine) -> torch.Tensor | None:
        """The regulariser's value at the current weights (None without one)."""
        if self.anchor is None:
            return None
        value = self.anchor.penalty(trainable(engine.unwrapped))
        self.last_penalty = float(value.detach())
        return value

    def log_fields(self) -> dict[str, float]:
        return {} if self.last_penalty is None else {"continual/penalty": self.last_penalty}

    # ------------------------------------------------------------ checkpoint
    def save_state(self, directory: Path) -> None:
        """Rank 0: the losses before training, theta* and F."""
        doc = {"before": self.before, "replayedRows": self.replayed}
        (directory / STATE_JSON).write_text(json.dumps(doc))
        if self.anchor is not None:
            self.anchor.save(directory)

    def load_state(self, directory: Path) -> None:
        """Every rank (resume): theta* and F are read in ``prepare``, once the model is known."""
        path = directory / STATE_JSON
        if path.exists():
            self.before = json.loads(path.read_text()).get("before")
        self._resume_dir = directory

    # ---------------------------------------------------------------- finish
    def finish(self, evaluate: Evaluate, eval_results: dict[str, Any]) -> dict[str, Any]:
        """Forgetting of every protected task and the new task's gain (eval_results.json)."""
        before = self.before or {}
        tasks = []
        for task in self.tasks:
            after = evaluate(task.eval)["loss"]
            start = before.get(task.name, float("nan"))
            tasks.append(
                {
                    "name": task.name,
                    "evalRows": len(task.eval),
                    "lossBefore": start,
                    "lossAfter": after,
                    "forgetting": after - start,
                }
            )
        base, tuned = eval_results.get("base") or {}, eval_results.get("tuned") or {}
        new_task: dict[str, Any] = {}
        if "loss" in base and "loss" in tuned:
            new_task = {
                "lossBase": base["loss"],
                "lossTuned": tuned["loss"],
                "gain": base["loss"] - tuned["loss"],
            }
        reg = self.spec.regularizer
        return {
            "protectedTasks": tasks,
            "newTask": new_task,
            "replay": {
                "ratio": self.spec.replay.ratio if self.spec.replay else 0.0,
                "rows": self.replayed,
            },
            "regularizer": None
            if reg is None
            else {
                "type": reg.type,
                "strength": reg.strength,
                "finalPenalty": self.last_penalty,
                **(self.anchor.fisher_summary() if self.anchor else {}),
            },
        }
