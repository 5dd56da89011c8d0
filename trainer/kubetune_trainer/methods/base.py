"""What every training method provides, and the shared causal-LM loss.

A method builds the trainable model from the base model (full weights, a PEFT adapter,
virtual tokens, bottleneck adapters, a reward head), computes the summed loss of a
micro-batch, and saves/reloads its trained weights in Hugging Face format.

Loss computation only projects the hidden states of positions that have a target onto
the vocabulary (``logits_to_keep`` with a boolean mask, supported by transformers 5's
decoder models): prompt tokens, padding and sample boundaries never touch the LM head,
which is the largest matmul of a small model and a large share of a big one. Where the
head is a plain linear layer, the cross-entropy is also chunked (``methods/chunked_ce.py``):
at most ``lm_head_chunk_size`` positions' logits exist at once, in forward and backward.
"""

from __future__ import annotations

import contextlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from kubetune.api.methods import METHOD_TRAITS, MethodTraits
from kubetune.api.resolve import ResolvedJob
from kubetune_trainer.data.batching import Batch
from kubetune_trainer.data.encode import IGNORE, Encoded
from kubetune_trainer.methods.chunked_ce import DEFAULT_CHUNK_SIZE, chunkable_head, chunked_lm_head

if TYPE_CHECKING:
    from kubetune_trainer.data.validate import PreparedData
    from kubetune_trainer.distributed.env import DistEnv
    from kubetune_trainer.distributed.strategy import Engine

Forward = Callable[..., Any]
#: builds this rank's batch of the given units of a split (the loop's collation)
MakeBatch = Callable[[list[Encoded], list[int], str], Batch]


@dataclass
class PerExample:
    """Summed NLL and target-token count of every sequence of a micro-batch, in batch order.

    Detached tensors on the batch's device; the evaluation turns them into floats for the
    held-out confidence intervals (paired bootstrap of the corpus-level loss).
    """

    nll: torch.Tensor  # [num_sequences]
    tokens: torch.Tensor  # [num_sequences]


@dataclass
class LossOutput:
    """Summed loss of one micro-batch and what it is normalised by."""

    loss_sum: torch.Tensor
    count: float  # target tokens (LM methods) or pairs (preference methods)
    metrics: dict[str, float] = field(default_factory=dict)  # sums, normalised by count
    #: per-sequence NLL sums of the LM objective under ``torch.no_grad`` (evaluation);
    #: None while training and for methods with another loss (reward, DPO)
    per_example: PerExample | None = None


@dataclass
class TokenLogprobs:
    """Log-probabilities of the target tokens of a batch, with their sequence index."""

    logprobs: torch.Tensor  # [N]
    sequence_index: torch.Tensor  # [N]
    num_sequences: int

    def per_sequence(self) -> torch.Tensor:
        out = torch.zeros(
            self.num_sequences, dtype=self.logprobs.dtype, device=self.logprobs.device
        )
        return out.index_add(0, self.sequence_index, self.logprobs)

    def tokens_per_sequence(self) -> torch.Tensor:
        ones = torch.ones_like(self.logprobs)
        out = torch.zeros(self.num_sequences, dtype=ones.dtype, device=ones.device)
        return out.index_add(0, self.sequence_index, ones)


def find_pretrained(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP/DeepSpeed/PEFT wrappers (or ``model`` itself)."""
    from transformers import PreTrainedModel

    current = model
    for _ in range(8):
        if isinstance(current, PreTrainedModel):
            return current
        inner = None
        for attr in ("module", "base_model", "model"):
            candidate = getattr(current, attr, None)
            if isinstance(candidate, nn.Module) and candidate is not current:
                inner = candidate
                break
        if inner is None:
            break
        current = inner
    return model


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    inner = find_pretrained(model)
    return "logits_to_keep" in inspect.signature(type(inner).forward).parameters


def token_logprobs(
    forward: Forward,
    batch: Batch,
    *,
    virtual_tokens: int = 0,
    keep_supported: bool = True,
    head: nn.Linear | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> TokenLogprobs:
    """Log p(target) of every labelled position (labels shifted by one), memory-lean.

    With ``head`` (the model's plain LM head, see :func:`chunkable_head`) the head returns
    the target log-probabilities computed ``chunk_size`` positions at a time, so no
    ``[targets, vocabulary]`` logits exist (the same values as the full cross-entropy).
    """
    labels = batch.labels
    targets = labels[:, 1:]
    valid = targets != IGNORE
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = valid
    dummy = not bool(valid.any())
    if dummy:  # zero-weight micro-batch: keep one position so every parameter sees a grad
        keep[0, 0] = True
    if virtual_tokens:
        pad = torch.zeros((keep.shape[0], virtual_tokens), dtype=torch.bool, device=keep.device)
        keep_model = torch.cat([pad, keep], dim=1)
    else:
        keep_model = keep
    tgt = targets[valid]
    seq = batch.sequence_ids[:, :-1][valid]
    if head is not None and keep_supported and not dummy:
        with chunked_lm_head(head, tgt, chunk_size):
            out = forward(**batch.inputs, logits_to_keep=keep_model, use_cache=False)
        return TokenLogprobs(out.logits.reshape(-1), seq, batch.num_sequences)
    if keep_supported:
        out = forward(**batch.inputs, logits_to_keep=keep_model, use_cache=False)
        logits = out.logits
        if logits.dim() == 3:  # models that return [1, N, V] for a mask
            logits = logits.reshape(-1, logits.shape[-1])
    else:
        out = forward(**batch.inputs, use_cache=False)
        logits = out.logits[keep_model]
    if dummy:
        scale = logits.float().sum() * 0.0
        return TokenLogprobs(
            scale.reshape(1),
            torch.zeros(1, dtype=torch.long, device=logits.device),
            batch.num_sequences,
        )
    logp = -F.cross_entropy(logits.float(), tgt, reduction="none")
    return TokenLogprobs(logp, seq, batch.num_sequences)


class Method(ABC):
    """A training method: how to build, train, save and reload the model."""

    name: str = "base"
    virtual_tokens: int = 0
    #: attention kernel for the trainable model (set by the loop: varlen when padding-free)
    attn_implementation: str = "sdpa"
    #: no dropout in the trained model: TRL's trainers of the preference and reward methods
    #: default to ``disable_dropout=True``, so the policy's log-probs are deterministic and
    #: comparable with the reference's (computed in eval mode)
    disable_dropout: bool = False
    #: target positions per LM-head chunk of the loss; None projects all at once (full logits)
    lm_head_chunk_size: int | None = DEFAULT_CHUNK_SIZE

    def __init__(self, job: ResolvedJob) -> None:
        self.job = job
        self._keep_supported: bool | None = None

    @property
    def traits(self) -> MethodTraits:
        return METHOD_TRAITS[self.name]

    @property
    def normalizer(self) -> Literal["tokens", "pairs"]:
        """What ``LossOutput.count`` counts, for the global normalisation of the loss."""
        return "pairs" if self.traits.preference_data else "tokens"

    # -- hooks of the loop (no-ops: only methods with state of their own use them)
    def setup(self, model_dir: Path, tokenizer: Any, load_dtype: torch.dtype) -> None:
        """Once before ``build``: what the method needs beyond the model (online RL
        generates, so it keeps the tokenizer and loads its reference from ``model_dir``)."""
        return None

    def prepare(self, engine: Engine, data: PreparedData, env: DistEnv, batch: MakeBatch) -> None:
        """Once before the first step (after a resume), on every rank."""
        return None

    def attach(self, batch: Batch, split: str) -> None:
        """Add the method's per-unit state of ``split`` to a collated batch."""
        return None

    def save_state(self, directory: Path) -> None:
        """Rank 0: write the method's state into a checkpoint being staged."""
        return None

    def load_state(self, directory: Path) -> None:
        """Every rank: read back what ``save_state`` wrote (a resume)."""
        return None

    # -- model --------------------------------------------------------------------
    def load_base(self, model_dir: Path, dtype: torch.dtype, **kwargs: Any) -> nn.Module:
        """The job's causal LM as every method loads it (remote-code policy, attention kernel)."""
        from kubetune_trainer.models.load import load_causal_lm
        from kubetune_trainer.vision import is_vision_job, vision_settings
        from kubetune_trainer.vision.model import freeze_parts

        model = load_causal_lm(
            model_dir,
            dtype=dtype,
            trust_remote_code=self.job.spec.model.trust_remote_code,
            attn_implementation=self.attn_implementation,
            **kwargs,
        )
        if is_vision_job(self.job):  # spec.vision: frozen tower, trained projector
            freeze_parts(model, vision_settings(self.job))
        return model

    @abstractmethod
    def build(self, model_dir: Path, tokenizer: Any, load_dtype: torch.dtype) -> nn.Module:
        """Load the base model and make it trainable the method's way."""

    def build_model(self, model_dir: Path, tokenizer: Any, load_dtype: torch.dtype) -> nn.Module:
        """``build``, then what applies to every method: gradient checkpointing when the
        spec asks for it, no dropout where the method's TRL trainer turns it off (one
        place, so no method and no LoRA-policy variant can forget either)."""
        model = self.build(model_dir, tokenizer, load_dtype)
        if self.job.spec.hyperparameters.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if self.disable_dropout:
            disable_dropout_in_model(model)
        return model

    @contextlib.contextmanager
    def base_behaviour(self, model: nn.Module) -> Iterator[None]:
        """Make the model behave like the untuned base (for the baseline evaluation)."""
        yield

    # -- loss ---------------------------------------------------------------------
    def count(self, batch: Batch) -> float:
        if self.normalizer == "pairs":
            return float(batch.pair_weights.sum()) if batch.pair_weights is not None else 0.0
        return float(batch.label_tokens)

    def logprobs(self, forward: Forward, model: nn.Module, batch: Batch) -> TokenLogprobs:
        if self._keep_supported is None:
            self._keep_supported = _accepts_logits_to_keep(model)
        chunked = self.lm_head_chunk_size is not None
        # looked up per call: the policy and, for DPO/KTO, the reference model come through here
        head = chunkable_head(find_pretrained(model)) if chunked else None
        return token_logprobs(
            forward,
            batch,
            virtual_tokens=self.virtual_tokens,
            keep_supported=self._keep_supported,
            head=head,
            chunk_size=self.lm_head_chunk_size or DEFAULT_CHUNK_SIZE,
        )

    def loss(self, forward: Forward, model: nn.Module, batch: Batch) -> LossOutput:
        """Summed next-token NLL over the labelled tokens (the SFT objective)."""
        lp = self.logprobs(forward, model, batch)
        nll = -lp.logprobs.sum()
        label_tokens = batch.label_tokens
        per_example = None
        if not torch.is_grad_enabled():  # evaluation only: training has no use for them
            per_nll = -lp.per_sequence().detach()
            # a batch without targets carries one zero-weight dummy position: no tokens
            tokens = lp.tokens_per_sequence() if label_tokens else torch.zeros_like(per_nll)
            per_example = PerExample(per_nll, tokens)
        return LossOutput(nll, float(label_tokens), {"nll": float(nll.detach())}, per_example)

    def eval_metrics(self, totals: dict[str, float]) -> dict[str, float]:
        """Turn summed eval metrics into reported ones."""
        import math

        count = max(totals.get("count", 0.0), 1.0)
        loss = totals.get("loss", 0.0) / count
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "tokens": totals.get("count", 0.0),
        }

    # -- weights ------------------------------------------------------------------
    def export_state_dict(
        self, model: nn.Module, full: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The part of a full state dict that the output holds (all of it by default)."""
        return full

    @abstractmethod
    def save(
        self, model: nn.Module, state_dict: dict[str, torch.Tensor], out_dir: Path, tokenizer: Any
    ) -> None:
        """Write the trained weights (HF format) to ``out_dir``."""

    @abstractmethod
    def load_trained(self, base_dir: Path, trained_dir: Path) -> nn.Module:
        """Load what ``save`` wrote onto a fresh base model (for reload checks/eval)."""

    def merge(self, base_dir: Path, trained_dir: Path, out_dir: Path, tokenizer: Any) -> None:
        from kubetune_trainer.errors import InvalidConfigError

        raise InvalidConfigError(f"method {self.name} cannot be merged into the base model")


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Non-reentrant checkpointing of every decoder layer: works with frozen inputs (PEFT)
    without hacks. transformers 5 names it ``activation_checkpointing_enable`` (the
    ``gradient_`` name is a deprecated alias); PEFT wrappers forward either."""
    target: Any = model
    kwargs = {"use_reentrant": False}
    if hasattr(target, "activation_checkpointing_enable"):
        target.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(target, "gradient_checkpointing_enable"):
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        from kubetune_trainer.errors import UnsupportedError

        raise UnsupportedError(
            f"hyperparameters.gradientCheckpointing: {type(model).__name__} cannot recompute "
            "activations (it has no activation_checkpointing_enable)"
        )


def disable_dropout_in_model(model: nn.Module) -> None:
    """TRL's ``disable_dropout_in_model`` (every ``nn.Dropout`` to p=0), and also the
    attention dropout that HF attention layers apply functionally from a float attribute
    (not an ``nn.Dropout`` module, so TRL's version leaves it on)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            setattr(module, "attention_dropout", 0.0)  # noqa: B010 (typed Tensor | Module)


def save_tokenizer(tokenizer: Any, out_dir: Path) -> None:
    tokenizer.save_pretrained(out_dir)


def save_whole_model(
    model: nn.Module, state_dict: dict[str, torch.Tensor], out_dir: Path, tokenizer: Any
) -> None:
    """Save a complete HF model (full fine-tuning, reward models) with its tokenizer."""
    find_pretrained(model).save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)  # type: ignore[operator]
    save_tokenizer(tokenizer, out_dir)
