"""Variable-length ("varlen") attention for padding-free batches, on any device.

transformers isolates packed samples for SDPA/eager by materialising a block-diagonal
``T x T`` mask over the whole flattened row, so attention still costs ``O(T^2)`` for
``T = sum of sample lengths`` — more than the padded batch it replaces. flash-attention's
varlen kernel avoids that on GPUs, but it is not a dependency and does not exist on
CPU. This attention function reads the sample boundaries the collator passes
(``cu_seq_lens_q``, the FlashAttention kwarg name) and runs causal SDPA per sample, so
the cost is ``sum(L_i^2)`` and no mask is ever built (the function is deliberately not
built for packed rows: the mask function registered with it returns no mask when the
model gets no 2D attention mask). Given a padding mask (a padded batch) it builds the
stock SDPA mask and defers to the stock SDPA path, so the model behaves exactly like
``sdpa`` there.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F

VARLEN_ATTENTION = "kubetune_varlen"


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [1, H, T, D], key/value [1, H_kv, T, D] -> output [1, T, H, D]."""
    boundaries = kwargs.get("cu_seq_lens_q")
    if boundaries is None or query.shape[0] != 1 or attention_mask is not None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    cuts = boundaries.tolist() if isinstance(boundaries, torch.Tensor) else list(boundaries)
    sizes = [end - start for start, end in itertools.pairwise(cuts)]
    gqa = query.shape[1] != key.shape[1]
    dropout_p = dropout if module.training else 0.0
    # split (not slicing in a loop): its backward is one concatenation, not one
    # full-size zero tensor per sample
    outputs = [
        F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout_p, scale=scaling, is_causal=True, enable_gqa=gqa
        ).transpose(1, 2)
        for q, k, v in zip(
            query.split(sizes, dim=2),
            key.split(sizes, dim=2),
            value.split(sizes, dim=2),
            strict=True,
        )
        if q.shape[2] > 0
    ]
    out = torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0].contiguous()
    return out, None


def varlen_mask(**kwargs: Any) -> Any:
    """No mask for packed rows (boundaries come as cu_seq_lens); SDPA's for padded ones."""
    if kwargs.get("attention_mask") is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(**kwargs)


def register_varlen_attention() -> str:
    """Make ``attn_implementation="kubetune_varlen"`` available to transformers models."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN_ATTENTION, varlen_mask)
    return VARLEN_ATTENTION


def padding_free_attention(device: torch.device) -> str:
    """flash-attention 2's varlen kernel when installed on a GPU, otherwise ours."""
    if device.type == "cuda":
        try:
            import flash_attn  # type: ignore[import-not-found]  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return register_varlen_attention()
