"""Reference log-probabilities computed once, before training (TRL's precompute_ref_log_probs).

The preference methods that compare the policy with a reference (DPO, KTO) need the
reference's log-probs of fixed sequences only, so they are computed in one pass and kept
per unit (a few floats each; saved in checkpoints): no frozen second model occupies
memory during training. The reference is the untouched policy under the method's
``base_behaviour`` (a LoRA policy: the base with the adapter disabled, no second copy),
or a separate model when the job names one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from kubetune_trainer.data.batching import Batch, eval_micro_batches
from kubetune_trainer.distributed.env import all_gather_objects

if TYPE_CHECKING:
    from kubetune_trainer.data.validate import PreparedData
    from kubetune_trainer.distributed.env import DistEnv
    from kubetune_trainer.distributed.strategy import Engine
    from kubetune_trainer.methods.base import Forward, MakeBatch, Method

#: a batch's reference values, one row per unit: [units, width]
Columns = Callable[["Forward", nn.Module, Batch], torch.Tensor]


def precompute_reference(
    method: Method,
    engine: Engine,
    data: PreparedData,
    env: DistEnv,
    make_batch: MakeBatch,
    columns: Columns,
    width: int,
    reference_uri: str | None = None,
) -> dict[str, torch.Tensor]:
    """split -> [units, width] float32 table, computed sharded by rank, complete on all."""
    context: contextlib.AbstractContextManager[None]
    if reference_uri:
        from kubetune_trainer.models.load import resolve_model_dir

        path = resolve_model_dir(reference_uri, what="reference model")
        ref_model = method.load_base(path, torch.float32).to(env.device).eval()
        forward: Forward = ref_model
        module: nn.Module = ref_model
        context = contextlib.nullcontext()
    else:
        engine.eval()
        forward, module = engine.forward, engine.model
        context = method.base_behaviour(engine.unwrapped)
    splits = {"train": data.train.examples}
    if data.eval is not None:
        splits["eval"] = data.eval.examples
    micro = method.job.spec.hyperparameters.micro_batch_size
    reference: dict[str, torch.Tensor] = {}
    with context, torch.no_grad():
        for split, examples in splits.items():
            rows: list[tuple[int, list[float]]] = []
            for ids in eval_micro_batches(len(examples), micro, env.world_size, env.rank):
                values = columns(forward, module, make_batch(examples, ids, "none"))
                rows.extend((unit, values[k].tolist()) for k, unit in enumerate(ids))
            table = torch.zeros((len(examples), width), dtype=torch.float32)
            for part in all_gather_objects(rows, env):
                for unit, row in part:
                    table[unit] = torch.tensor(row)
            reference[split] = table
    engine.train()
    return reference
