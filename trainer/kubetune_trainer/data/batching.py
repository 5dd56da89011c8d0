"""Deterministic, resumable batch schedule and the collators (padding-free or padded).

Schedule. The order of samples in epoch ``e`` is a permutation seeded by (seed, e), and
optimizer step ``s`` consumes a fixed slice of it, so the data position after a restart
is a pure function of the step number: resuming needs no data-loader state and no
replay. Each rank receives exactly ``gradient_accumulation_steps`` micro-batches per
step, every step. When the last step of an epoch has fewer samples than the global
batch, the empty micro-batch slots become *dummy* micro-batches (a real sample with
every label masked and zero weight): all ranks still run the same number of
forward/backward passes, which DDP/FSDP/ZeRO collectives require, and no sample is
dropped or repeated.

Padding-free batching. With ``packing`` the samples of a micro-batch are concatenated
into one row with ``position_ids`` restarting at 0 for every sample and no attention
mask. transformers (>= 4.5x, checked on 5.23) detects the restarts and builds a
block-diagonal causal mask for SDPA/eager (varlen kernels for flash-attention), so no
token attends across samples; ``tests/trainer/test_packing.py`` proves the packed loss
equals the loss of the samples run one by one. No compute is spent on padding. Only
the methods whose traits say ``packs`` (full, lora, qlora, adapter) run this way, and
only with ``dataset.packing`` (on by default for their SFT formats); every other method
and format (prefix/prompt tuning, reward, DPO, KTO, ORPO, online RL) is padded:
:func:`padding_free_batches` is the one place that decides.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from kubetune.api.methods import METHOD_TRAITS
from kubetune.api.resolve import ResolvedJob
from kubetune_trainer.data.encode import (
    IGNORE,
    Encoded,
    EncodedPair,
    EncodedSample,
    EncodedUnpaired,
)
from kubetune_trainer.models.varlen_attention import LAYOUT_KWARG, PackedLayout


@dataclass(frozen=True)
class BatchPlan:
    """Which samples each rank processes in each micro-batch of each optimizer step."""

    num_units: int
    global_batch_size: int
    micro_batch_size: int
    world_size: int
    gradient_accumulation_steps: int
    seed: int

    def __post_init__(self) -> None:
        expected = self.micro_batch_size * self.world_size * self.gradient_accumulation_steps
        if expected != self.global_batch_size:
            raise ValueError(
                f"global batch {self.global_batch_size} != micro {self.micro_batch_size} x "
                f"world {self.world_size} x accumulation {self.gradient_accumulation_steps}"
            )
        if self.num_units < 1:
            raise ValueError("no samples to schedule")

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.num_units / self.global_batch_size))

    def total_steps(self, epochs: float | None, max_steps: int | None) -> int:
        if max_steps:
            return int(max_steps)
        return max(1, math.ceil((epochs or 1.0) * self.steps_per_epoch))

    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch

    def order(self, epoch: int) -> list[int]:
        return _permutation(self.num_units, self.seed, epoch)

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """Unit indices of each micro-batch of ``rank`` at ``step`` (empty = dummy)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        order = self.order(epoch)
        start = within * self.global_batch_size
        units = order[start : start + self.global_batch_size]
        mine = units[rank :: self.world_size]
        return [
            mine[i * self.micro_batch_size : (i + 1) * self.micro_batch_size]
            for i in range(self.gradient_accumulation_steps)
        ]


@lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def eval_micro_batches(num_units: int, micro: int, world_size: int, rank: int) -> list[list[int]]:
    """Shard an evaluation set; every rank gets the same number of micro-batches."""
    mine = list(range(rank, num_units, world_size))
    per_rank = math.ceil(math.ceil(num_units / world_size) / micro) if num_units else 0
    return [mine[i * micro : (i + 1) * micro] for i in range(per_rank)]


@dataclass
class Batch:
    """One micro-batch of tensors plus the counts the loop reports."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    sequence_ids: torch.Tensor
    num_sequences: int
    pair_weights: torch.Tensor | None
    real_tokens: int
    samples: int
    unit_ids: list[int] = field(default_factory=list)
    #: per-pair reference log-probs [n, 2] (chosen, rejected), set by DPO before the loss
    reference: torch.Tensor | None = None
    #: unpaired examples (KTO): True where the completion is desirable
    desirable: torch.Tensor | None = None
    #: unpaired examples (KTO): the mismatched sequences of the KL reference point
    kl: Batch | None = None

    def to(self, device: torch.device) -> Batch:
        return Batch(
            inputs={
                k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in self.inputs.items()
            },
            labels=self.labels.to(device, non_blocking=True),
            sequence_ids=self.sequence_ids.to(device, non_blocking=True),
            num_sequences=self.num_sequences,
            pair_weights=None if self.pair_weights is None else self.pair_weights.to(device),
            real_tokens=self.real_tokens,
            samples=self.samples,
            unit_ids=self.unit_ids,
            reference=None if self.reference is None else self.reference.to(device),
            desirable=None if self.desirable is None else self.desirable.to(device),
            kl=None if self.kl is None else self.kl.to(device),
        )

    @property
    def label_tokens(self) -> int:
        return int((self.labels[:, 1:] != IGNORE).sum())


def _masked(sample: EncodedSample) -> EncodedSample:
    # replace() keeps a subclass's extra fields (a vision sample's pixel values)
    return dataclasses.replace(sample, labels=[IGNORE] * len(sample.labels))


def _sequences(
    units: list[Encoded], dummy: Encoded
) -> tuple[list[EncodedSample], int, torch.Tensor | None]:
    """Flatten units into sequences; pairs become [chosen..., rejected...]."""
    real = bool(units)
    units = units or [dummy]
    if isinstance(units[0], EncodedPair):
        pairs = [u for u in units if isinstance(u, EncodedPair)]
        seqs = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        if not real:
            seqs = [_masked(s) for s in seqs]
        weights = torch.full((len(pairs),), 1.0 if real else 0.0)
        return seqs, (len(pairs) if real else 0), weights
    if isinstance(units[0], EncodedUnpaired):
        seqs = [u.sample for u in units if isinstance(u, EncodedUnpaired)]
        if not real:
            seqs = [_masked(s) for s in seqs]
        return seqs, (len(seqs) if real else 0), torch.full((len(seqs),), 1.0 if real else 0.0)
    seqs = [u for u in units if isinstance(u, EncodedSample)]
    if not real:
        seqs = [_masked(s) for s in seqs]
    return seqs, (len(seqs) if real else 0), None


def padding_free_batches(job: ResolvedJob) -> bool:
    """Whether the job's micro-batches are padding-free rows (else right-padded rows):
    ``dataset.packing`` (resolved: on for SFT formats of methods that pack) and a method
    that can pack (virtual tokens are per sample, reward models pool each row's last
    token, and the preference methods are refused packing by the API)."""
    return bool(job.spec.dataset.packing) and METHOD_TRAITS[job.spec.method].packs


def collate(
    units: list[Encoded],
    *,
    padding_free: bool,
    pad_token_id: int,
    dummy: Encoded,
    pad_to_multiple_of: int = 1,
) -> Batch:
    """Build one micro-batch; an empty ``units`` list gives a zero-weight dummy batch.

    ``pad_to_multiple_of`` rounds a padding-free row's length up (see :func:`_pad_segment`).
    """
    batch = _collate(
        units,
        padding_free=padding_free,
        pad_token_id=pad_token_id,
        dummy=dummy,
        pad_to_multiple_of=pad_to_multiple_of,
    )
    unpaired = [u for u in units or [dummy] if isinstance(u, EncodedUnpaired)]
    if unpaired:
        batch.desirable = torch.tensor([u.desirable for u in unpaired], dtype=torch.bool)
        kl = [u.kl for u in unpaired if u.kl is not None]
        if len(kl) == len(unpaired):  # the KL sequences ride along, in the same order
            kl_units: list[Encoded] = [s if units else _masked(s) for s in kl]
            batch.kl = _collate(
                kl_units, padding_free=padding_free, pad_token_id=pad_token_id, dummy=kl_units[0]
            )
    return batch


def _pad_segment(seqs: list[EncodedSample], multiple: int, pad_token_id: int) -> EncodedSample:
    """A label-free sample that rounds the packed row up to a multiple of ``multiple`` tokens.

    On CPU, oneDNN JIT-compiles and caches a bf16 matmul kernel per distinct shape, so a
    packed row whose length changes every step grows memory by megabytes per step (and
    pays a compilation); a few rounded lengths are reused instead. The segment is its own
    sample in the layout (it attends only to itself) and has no labels: the loss and the
    gradients are those of the real samples.
    """
    total = sum(len(s.input_ids) for s in seqs)
    n = -total % multiple
    return EncodedSample(input_ids=[pad_token_id] * n, labels=[IGNORE] * n)


def _collate(
    units: list[Encoded],
    *,
    padding_free: bool,
    pad_token_id: int,
    dummy: Encoded,
    pad_to_multiple_of: int = 1,
) -> Batch:
    seqs, samples, weights = _sequences(units, dummy)
    real_tokens = sum(len(s.input_ids) for s in seqs) if samples else 0
    if padding_free:
        num_sequences = len(seqs)
        pad = _pad_segment(seqs, pad_to_multiple_of, pad_token_id)
        if pad.input_ids:  # carries the last sample's id; unused, as it has no labels
            seqs = [*seqs, pad]
        ids = torch.tensor([t for s in seqs for t in s.input_ids], dtype=torch.long)
        labels = torch.tensor([t for s in seqs for t in s.labels], dtype=torch.long)
        positions = torch.cat([torch.arange(len(s.input_ids)) for s in seqs])
        seq_ids = torch.cat(
            [
                torch.full((len(s.input_ids),), min(i, num_sequences - 1), dtype=torch.long)
                for i, s in enumerate(seqs)
            ]
        )
        layout = PackedLayout([len(s.input_ids) for s in seqs], padding=len(pad.input_ids))
        bounds = layout.cu_seq_lens()
        return Batch(
            # position restarts isolate samples for SDPA/eager (transformers builds a
            # block mask); the other kwargs drive varlen kernels that need no mask:
            # flash-attention 2 reads cu_seq_lens (device) + max_length (host int),
            # kubetune_varlen the host-side layout, so no layer syncs with the device.
            inputs={
                "input_ids": ids[None],
                "position_ids": positions[None],
                "cu_seq_lens_q": bounds,
                "cu_seq_lens_k": bounds,
                "max_length_q": layout.max_length,  # type: ignore[dict-item]
                "max_length_k": layout.max_length,  # type: ignore[dict-item]
                LAYOUT_KWARG: layout,  # type: ignore[dict-item]
            },
            labels=labels[None],
            sequence_ids=seq_ids[None],
            num_sequences=num_sequences,
            pair_weights=weights,
            real_tokens=real_tokens,
            samples=samples,
        )
    width = max(len(s.input_ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        n = len(s.input_ids)
        ids[row, :n] = torch.tensor(s.input_ids)
        labels[row, :n] = torch.tensor(s.labels)
        mask[row, :n] = 1
    seq_ids = torch.arange(len(seqs))[:, None].expand(len(seqs), width).contiguous()
    inputs = {"input_ids": ids, "attention_mask": mask}
    pixels = [p for s in seqs if (p := getattr(s, "pixel_values", None)) is not None]
    if pixels:  # chat with images (vision/encode.py): the images of all rows, in order
        inputs["pixel_values"] = torch.cat(pixels)
    return Batch(
        inputs=inputs,
        labels=labels,
        sequence_ids=seq_ids,
        num_sequences=len(seqs),
        pair_weights=weights,
        real_tokens=real_tokens,
        samples=samples,
    )
