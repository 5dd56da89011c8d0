"""Variable-length ("varlen") attention for padding-free batches, with no per-layer sync.

transformers isolates packed samples for SDPA/eager by materialising a block-diagonal
``T x T`` mask over the whole flattened row, so attention still costs ``O(T^2)`` for
``T = sum of sample lengths`` — more than the padded batch it replaces. This attention
function instead reads the sample boundaries from a :class:`PackedLayout` that the
collator builds once per micro-batch **on the host** (Python ints): no layer ever
converts a device tensor to Python (``.tolist()``/``.item()`` would be one device sync
per layer on a GPU).

Kernels, by device:

* CUDA with ``flash_attn`` installed: :func:`padding_free_attention` picks transformers'
  ``flash_attention_2``, which reads ``cu_seq_lens_q/k`` (device tensors) and
  ``max_length_q/k`` (host ints) — the collator passes both.
* any other accelerator: PyTorch FlexAttention with a document-causal ``BlockMask`` built
  once per micro-batch (cached on the layout, shared by every layer), compiled once.
* CPU: causal SDPA per sample (``sum(L_i^2)``, no mask at all; FlexAttention has no CPU
  backward in torch 2.15 and its eager CPU forward is a reference implementation).

Given a padding mask (a padded batch) the function defers to the stock SDPA path, so the
model behaves exactly like ``sdpa`` there. The mask function registered with it returns
no mask for packed rows (the model gets no 2D attention mask then).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

VARLEN_ATTENTION = "kubetune_varlen"
# the forward kwarg (model -> decoder layers -> attention) that carries the layout
LAYOUT_KWARG = "packed_layout"


class PackedLayout:
    """Sample lengths of one packed row, kept on the host, and masks built from them.

    Deliberately a plain object (not a tensor, not a dataclass): ``Batch.to`` and the
    DDP/FSDP input movers pass it through untouched, so it never reaches a device.
    """

    __slots__ = ("_block_masks", "max_length", "padding", "sizes")

    def __init__(self, sizes: Sequence[int], *, padding: int = 0) -> None:
        if not sizes or min(sizes) < 0 or sum(sizes) < 1:
            raise ValueError(f"a packed row needs at least one token, got lengths {list(sizes)}")
        self.sizes: tuple[int, ...] = tuple(int(n) for n in sizes)
        self.max_length = max(self.sizes)
        #: trailing tokens that only round the row's length (the collator's label-free
        #: segment): per-token statistics such as expert routing skip them
        self.padding = padding
        self._block_masks: dict[torch.device, BlockMask] = {}

    def token_mask(self) -> torch.Tensor:
        """1 for the row's real tokens, 0 for the trailing padding ([1, T], CPU)."""
        mask = torch.ones(1, self.total, dtype=torch.long)
        if self.padding:
            mask[:, self.total - self.padding :] = 0
        return mask

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def cu_seq_lens(self) -> torch.Tensor:
        """Cumulative boundaries ``[0, L0, L0+L1, ...]`` (int32, CPU) for varlen kernels."""
        return torch.tensor([0, *itertools.accumulate(self.sizes)], dtype=torch.int32)

    def document_ids(self) -> torch.Tensor:
        """The sample index of every token of the row (CPU)."""
        return torch.repeat_interleave(
            torch.arange(len(self.sizes)), torch.tensor(self.sizes, dtype=torch.long)
        )

    def block_mask(self, device: torch.device) -> BlockMask:
        """Document-causal FlexAttention mask for this row, built once per device."""
        mask = self._block_masks.get(device)
        if mask is None:
            mask = document_causal_block_mask(self, device)
            self._block_masks[device] = mask
        return mask

    def __repr__(self) -> str:
        return f"PackedLayout(sizes={list(self.sizes)})"


def document_causal_mask_mod(doc: torch.Tensor) -> Callable[..., torch.Tensor]:
    """FlexAttention ``mask_mod``: attend causally, and only within the same sample."""

    def mask_mod(
        b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
    ) -> torch.Tensor:
        return (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)

    return mask_mod


def document_causal_block_mask(layout: PackedLayout, device: torch.device) -> BlockMask:
    from torch.nn.attention.flex_attention import create_block_mask

    doc = layout.document_ids()
    if device.type == "cuda":  # pinned: the copy is asynchronous, not a stream sync
        doc = doc.pin_memory()
    doc = doc.to(device, non_blocking=True)
    total = layout.total
    return create_block_mask(
        document_causal_mask_mod(doc),
        B=None,
        H=None,
        Q_LEN=total,
        KV_LEN=total,
        device=device,
        # compiled construction never materialises the T x T mask (needs a compiler
        # backend for the device; the eager path is for CPU tests)
        _compile=device.type != "cpu",
    )


_compiled_flex: Callable[..., Any] | None = None


def _flex_kernel(device: torch.device) -> Callable[..., Any]:
    """FlexAttention compiled once per process on accelerators (eager flex is a slow
    reference); eager on CPU, where it serves tests (forward only)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if device.type == "cpu":
        return cast("Callable[..., Any]", flex_attention)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention)
    return _compiled_flex


def flex_varlen(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: PackedLayout,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """query [1, H, T, D], key/value [1, H_kv, T, D] -> [1, T, H, D] via FlexAttention."""
    kernel = _flex_kernel(query.device)
    out = kernel(
        query,
        key,
        value,
        block_mask=layout.block_mask(query.device),
        scale=scale,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2).contiguous()


#: per_sample_sdpa pads each sample to a multiple of this length: CPU SDPA JIT-compiles
#: and caches a (oneDNN brgemm) kernel per distinct sequence length, so unpadded, memory
#: grows with every new sample length (~1 MiB each) instead of settling
SAMPLE_MULTIPLE = 64


def per_sample_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: PackedLayout,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """query [1, H, T, D], key/value [1, H_kv, T, D] -> [1, T, H, D], one SDPA per sample.

    Each sample is padded at its end to a multiple of :data:`SAMPLE_MULTIPLE`: under the
    causal mask no real position attends to the padding, so the real rows are unchanged.
    """
    sizes = list(layout.sizes)
    gqa = query.shape[1] != key.shape[1]

    def padded(x: torch.Tensor) -> torch.Tensor:
        n = -x.shape[2] % SAMPLE_MULTIPLE
        return F.pad(x, (0, 0, 0, n)) if n else x

    # split (not slicing in a loop): its backward is one concatenation, not one
    # full-size zero tensor per sample
    outputs = [
        F.scaled_dot_product_attention(
            padded(q),
            padded(k),
            padded(v),
            dropout_p=dropout_p,
            scale=scale,
            is_causal=True,
            enable_gqa=gqa,
        )[:, :, : q.shape[2]].transpose(1, 2)
        for q, k, v in zip(
            query.split(sizes, dim=2),
            key.split(sizes, dim=2),
            value.split(sizes, dim=2),
            strict=True,
        )
        if q.shape[2] > 0
    ]
    return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0].contiguous()


def prefers_flex(device: torch.device) -> bool:
    """FlexAttention on accelerators; per-sample SDPA on CPU (no flex backward there)."""
    return device.type != "cpu"


def layout_from_boundaries(boundaries: Any) -> PackedLayout | None:
    """A layout from another collator's ``cu_seq_lens_q`` (e.g. TRL's padding-free one).

    Only host boundaries are accepted: reading a device tensor here would be one sync per
    layer, the cost :class:`PackedLayout` exists to avoid.
    """
    if boundaries is None:
        return None
    if isinstance(boundaries, torch.Tensor):
        if boundaries.device.type != "cpu":
            raise ValueError(
                f"packed row without its {LAYOUT_KWARG!r} and with device-side boundaries: "
                "build batches with kubetune_trainer.data.batching.collate (host-side sample "
                "boundaries)"
            )
        boundaries = boundaries.tolist()
    cuts = [int(c) for c in boundaries]
    return PackedLayout([end - start for start, end in itertools.pairwise(cuts)])


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
    layout = kwargs.get(LAYOUT_KWARG)
    if layout is None and attention_mask is None:
        layout = layout_from_boundaries(kwargs.get("cu_seq_lens_q"))
    if layout is None or query.shape[0] != 1 or attention_mask is not None:
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
    if layout.total != query.shape[2]:
        raise ValueError(f"{layout!r} covers {layout.total} tokens, the row has {query.shape[2]}")
    dropout_p = dropout if module.training else 0.0
    if dropout_p == 0.0 and prefers_flex(query.device):
        return flex_varlen(query, key, value, layout, scale=scaling), None
    return per_sample_sdpa(query, key, value, layout, scale=scaling, dropout_p=dropout_p), None


def varlen_mask(**kwargs: Any) -> Any:
    """No mask for packed rows (boundaries come as a PackedLayout); SDPA's for padded ones."""
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
