"""Protected tasks' rows: read and encoded like spec.dataset, split into the rows that may
be replayed (and feed the Fisher estimate) and the held-out rows forgetting is measured on.

Replay is a pure function of (seed, sizes, ratio): the chosen protected rows are appended
to the new task's training units once, before the batch plan is built, so the existing
schedule shuffles them with the new rows every epoch, packs them, and shards them across
ranks exactly like new rows; a resume recomputes the same set.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from kubetune.api.continual import DEFAULT_PROTECTED_EVAL_SPLIT, ProtectedTask
from kubetune.api.resolve import ResolvedJob
from kubetune.api.sources import DatasetSpec
from kubetune_trainer.data.encode import Encoded, Encoder
from kubetune_trainer.data.validate import (
    DataReport,
    PreparedData,
    check_personal_data,
    check_report,
    encode_split,
    hold_out,
)
from kubetune_trainer.errors import InvalidDataError
from kubetune_trainer.uris import resolve_location


@dataclass
class ProtectedData:
    """One protected task: rows that may be replayed, rows forgetting is measured on."""

    name: str
    train: list[Encoded]
    eval: list[Encoded]
    report: DataReport


def _as_dataset(task: ProtectedTask, dataset: DatasetSpec) -> DatasetSpec:
    """The task's rows are read with the new task's length limit and loss masking."""
    return DatasetSpec(
        train=task.train,
        format=task.format,
        field_mapping=task.field_mapping,
        max_seq_length=dataset.max_seq_length,
        completion_only_loss=dataset.completion_only_loss,
        skip_invalid_rows=dataset.skip_invalid_rows,
    )


def load_protected(job: ResolvedJob, tokenizer: Any) -> list[ProtectedData]:
    """Every protected task of ``spec.continual``, validated like the training data."""
    spec = job.spec
    assert spec.continual is not None
    out: list[ProtectedData] = []
    policy = spec.data_policy.personal_data if spec.data_policy else None  # replayed rows train
    for index, task in enumerate(spec.continual.protected_tasks):
        ds = _as_dataset(task, spec.dataset)
        encoder = Encoder(tokenizer, ds.max_seq_length, ds.completion_only_loss)
        split = f"protected/{task.name}"
        path = resolve_location(task.train, InvalidDataError, what=split, repo_type="dataset")
        train = encode_split(path, task.train, split, ds, encoder, personal_data=policy)
        check_report(train.report)
        check_personal_data(train.report, policy)
        if task.eval:
            eval_path = resolve_location(
                task.eval, InvalidDataError, what=f"{split} eval", repo_type="dataset"
            )
            held = encode_split(
                eval_path, task.eval, f"{split}/eval", ds, encoder, personal_data=policy
            )
            check_report(held.report)
            check_personal_data(held.report, policy)
            out.append(ProtectedData(task.name, train.examples, held.examples, train.report))
            continue
        if len(train.examples) < 2:
            raise InvalidDataError(
                f"protected task {task.name}: {task.train} needs at least 2 rows to hold some "
                "out for measuring forgetting (or set eval)"
            )
        fraction = task.eval_split or DEFAULT_PROTECTED_EVAL_SPLIT
        keep, held_idx = hold_out(train.examples, fraction, spec.hyperparameters.seed + index + 1)
        out.append(
            ProtectedData(
                task.name,
                [train.examples[i] for i in keep],
                [train.examples[i] for i in held_idx],
                train.report,
            )
        )
    return out


def replay_count(new_rows: int, ratio: float) -> int:
    """Protected rows to add so they are ``ratio`` of the epoch's training rows."""
    if ratio <= 0.0:
        return 0
    return round(new_rows * ratio / (1.0 - ratio))


def even_shares(total: int, tasks: int) -> list[int]:
    """``total`` split over ``tasks`` as evenly as possible (the first ones get the rest)."""
    base, rest = divmod(total, tasks)
    return [base + (1 if i < rest else 0) for i in range(tasks)]


def choose_rows(sizes: list[int], shares: list[int], seed: int) -> list[tuple[int, int]]:
    """(task, row) pairs: ``shares[t]`` rows of task t, in a seeded order, without
    repetition until a task's rows are used up (then its order starts again)."""
    chosen: list[tuple[int, int]] = []
    for task, (size, share) in enumerate(zip(sizes, shares, strict=True)):
        order = list(range(size))
        random.Random(seed * 7_919 + 104_729 + task).shuffle(order)
        chosen.extend((task, order[i % size]) for i in range(share) if size)
    return chosen


def replay_examples(
    protected: list[ProtectedData], new_rows: int, ratio: float, seed: int
) -> list[Encoded]:
    """The protected rows replayed in every epoch (see ``ReplaySpec.ratio``)."""
    count = replay_count(new_rows, ratio)
    shares = even_shares(count, len(protected))
    picks = choose_rows([len(p.train) for p in protected], shares, seed)
    return [protected[t].train[i] for t, i in picks]


def fisher_examples(protected: list[ProtectedData], samples: int, seed: int) -> list[Encoded]:
    """The protected training rows whose gradients estimate the Fisher information."""
    sizes = [len(p.train) for p in protected]
    shares = [min(s, n) for s, n in zip(even_shares(samples, len(protected)), sizes, strict=True)]
    picks = choose_rows(sizes, shares, seed + 1)
    return [protected[t].train[i] for t, i in picks]


def add_replay(job: ResolvedJob, tokenizer: Any, data: PreparedData) -> list[ProtectedData]:
    """Read the protected tasks and append the replayed rows to ``data``'s training units
    (the loop and ``--validate-only`` both do this, so both plan the same steps)."""
    assert job.spec.continual is not None
    tasks = load_protected(job, tokenizer)
    replay = job.spec.continual.replay
    ratio = replay.ratio if replay else 0.0
    seed = job.spec.hyperparameters.seed
    data.train.examples.extend(replay_examples(tasks, len(data.train.examples), ratio, seed))
    return tasks


def describe_protection(tasks: list[ProtectedData], replayed: int) -> str:
    """One line for ``--validate-only``: what is protected and how much is replayed."""
    parts = ", ".join(f"{t.name} ({len(t.train)} train, {len(t.eval)} eval rows)" for t in tasks)
    return f"continual: protecting {parts}; {replayed} replayed rows per epoch"
