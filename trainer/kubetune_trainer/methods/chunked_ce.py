"""Target log-probabilities through the LM head without materialising full-vocabulary logits.

``log p(target) = z_target - logsumexp(z)`` with ``z = h @ W.T (+ b)``, computed for
``chunk_size`` rows (target positions) at a time: only ``[chunk_size, V]`` logits exist at
any moment, in the forward and in the backward, which recomputes them from the saved
hidden states instead of keeping ``[N, V]`` logits and their log-softmax alive. With a
vocabulary 30x the hidden size (Llama-3: 128256 / 4096) those logits are the largest
activation of a training step.

The LM head's ``forward`` is swapped for the duration of one model call
(:func:`chunked_lm_head`), so the projection still runs inside the head module: DDP sees
the weight used, FSDP/ZeRO-3 gather it around the call and its backward as for any layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from kubetune.plan.memory import LOSS_CHUNK_ROWS
from kubetune.plan.shape import LOGIT_TRANSFORMS

#: target rows projected at once ([1024, V] fp32 is 0.5 GiB at Llama-3's vocabulary); shared
#: with ``kubetune plan``'s memory model
DEFAULT_CHUNK_SIZE = LOSS_CHUNK_ROWS

#: rows are padded to a multiple of this: on CPU oneDNN compiles and caches a bf16 matmul
#: kernel per distinct shape, so a row count that changes every step grows memory per step
ROW_MULTIPLE = 64


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


class ChunkedTargetLogprob(torch.autograd.Function):
    """``log_softmax(h @ W.T + b)[i, t_i]`` for every row ``i``, ``chunk_size`` rows at a time."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,  # [N, H]
        weight: torch.Tensor,  # [V, H]
        bias: torch.Tensor | None,  # [V]
        targets: torch.Tensor,  # [N]
        chunk_size: int,
    ) -> torch.Tensor:
        dtype = _compute_dtype(hidden)
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        lse = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        out = torch.empty_like(lse)
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            logits = _project(hidden[rows].to(dtype), w, b).float()
            lse[rows] = torch.logsumexp(logits, dim=-1)
            out[rows] = logits.gather(1, targets[rows, None]).squeeze(1) - lse[rows]
        # one chunk in all: keep its softmax for the backward (no bigger than a chunk) instead
        # of recomputing the projection; more chunks are recomputed one at a time
        single = hidden.shape[0] <= chunk_size and any(ctx.needs_input_grad[:3])
        ctx.probs = logits.sub_(lse[:, None]).exp_() if single else None
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk_size, ctx.dtype = chunk_size, dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        dtype, chunk = ctx.dtype, ctx.chunk_size
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        )
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device)
        grad_out = grad_out.float()
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            h = hidden[rows].to(dtype)
            if ctx.probs is not None:
                probs, ctx.probs = ctx.probs, None
            else:
                probs = _project(h, w, b).float().sub_(lse[rows, None]).exp_()
            # d log p_t / d z_j = 1[j = t] - softmax(z)_j, times the incoming gradient
            grad = probs.mul_(-grad_out[rows, None])
            grad.scatter_add_(1, targets[rows, None], grad_out[rows, None])
            if need_b:
                grad_b += grad.sum(0)
            grad = grad.to(dtype)
            if grad_h is not None:
                grad_h[rows] = (grad @ w).to(hidden.dtype)
            if grad_w is not None:  # accumulated in fp32 whatever the compute dtype
                if grad.dtype == torch.float32:
                    grad_w.addmm_(grad.t(), h)
                else:
                    grad_w += (grad.t() @ h).float()
        return (
            grad_h,
            None if grad_w is None else grad_w.to(weight.dtype),
            grad_b.to(bias.dtype) if need_b and bias is not None else None,
            None,
            None,
        )


def _project(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return h @ w.t() if b is None else torch.addmm(b, h, w.t())


def chunked_target_logprobs(
    hidden: torch.Tensor,
    head: nn.Linear,
    targets: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Log p(target) of each row of ``hidden`` ([..., H], rows in order) under ``head``."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    n = flat.shape[0]
    if n != targets.numel():
        raise ValueError(f"{n} hidden rows for {targets.numel()} targets")
    targets = targets.reshape(-1)
    pad = -n % ROW_MULTIPLE
    if pad:  # zero rows, sliced off below: they get no gradient and add none to the head's
        flat = torch.cat([flat, flat.new_zeros(pad, flat.shape[1])])
        targets = torch.cat([targets, targets.new_zeros(pad)])
    out: torch.Tensor = ChunkedTargetLogprob.apply(
        flat, head.weight, head.bias, targets, chunk_size
    )
    return out[:n]


def chunkable_head(pretrained: nn.Module) -> nn.Linear | None:
    """The plain ``nn.Linear`` LM head of ``pretrained`` when its logits need no transform."""
    get = getattr(pretrained, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if type(head) is not nn.Linear:  # PEFT-wrapped, quantised or tied to something else
        return None
    config = getattr(pretrained, "config", None)
    get_text = getattr(config, "get_text_config", None)
    text = get_text() if callable(get_text) else config
    if any(getattr(text, name, None) not in (None, 1.0) for name in LOGIT_TRANSFORMS):
        return None
    return head


@contextlib.contextmanager
def chunked_lm_head(
    head: nn.Linear, targets: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[None]:
    """Within the block, ``head(h)`` returns ``log p(targets)`` as ``[..., 1]`` instead of logits.

    The model's ``logits`` output then holds the target log-probabilities, one per kept
    position, in the order of ``targets``.
    """

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        logp = chunked_target_logprobs(hidden, head, targets, chunk_size)
        return logp.reshape(*hidden.shape[:-1], 1)

    head.forward = forward  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        del head.forward  # back to the class's forward
