"""Peak GPU memory per process of one training setup, from the model's shape.

The estimate counts what PyTorch keeps alive at the peak of a training step, as the
trainer runs it (``kubetune_trainer``): parameters, gradients, AdamW state, the tensors
autograd saves for the backward pass, and the loss's working set over the logits.
Formulas (bytes; ``N`` parameters, ``Nt`` trained ones, ``G`` GPUs, ``c`` bytes of the
compute dtype: 2 in bf16/fp16, 4 in fp32; ``T`` tokens of a micro-batch):

* weights: the trainer keeps trained weights in fp32 (the optimizer's master copy) and
  autocasts the matmuls under DDP (4N); a frozen PEFT base is loaded in the compute dtype
  (cN); QLoRA stores the decoder's linear weights in NF4 (0.5 bytes + 1/64 for the block
  constants; double quantization makes those 8-bit) and the rest in the compute dtype.
  DeepSpeed casts the module to the compute dtype and keeps an fp32 master copy in the
  optimizer (ZeRO's 2 + 2 + 12 = 16 bytes per parameter).
* gradients: one per trained parameter, in the weights' dtype; DDP on more than one GPU
  adds its gradient buckets (another copy, ``gradient_as_bucket_view`` is off).
* AdamW: two fp32 moments (8 Nt), plus the fp32 master copy (4 Nt) under DeepSpeed.
* sharding divides by G: ZeRO-1 the optimizer state, ZeRO-2 also gradients, ZeRO-3 and
  FSDP also weights (FSDP and ZeRO-3 then hold about two layers, and FSDP the root's
  embeddings, unsharded in the compute dtype). Offload moves the sharded state to CPU.
* autocast: under DDP mixed precision, fp32 weights are cast to bf16/fp16 once per step
  and the copies live until the backward pass (c per trained matmul weight).
* activations, per token and decoder layer, counted tensor by tensor (what autograd
  saves: a matmul keeps its input only when its weight trains, an element-wise op its
  operands when the input needs a gradient):

  - each RMSNorm: its fp32 input (4h), plus the normalised value when the norm's weight
    trains (4h with fp32 weights, else c·h);
  - the input of each projection group whose weight trains (q/k/v, o, gate/up, down):
    c per element, once per consumer under autocast (every consumer casts its own copy);
    LoRA saves its adapter input per adapted projection (c, plus the dropout mask: 1 byte
    on CUDA, the c-byte scaled noise on the CPU);
  - attention with a memory-efficient kernel (SDPA/flash): q, k, v and the output,
    c·(2·q_dim + 2·kv_dim), plus the fp32 log-sum-exp per head; no s² term (eager
    attention would add Korthikanti et al.'s 5·a·s/h);
  - the MLP's element-wise part: c·3i for a gated MLP (gate output, its activation, up
    output), c·i for a plain one; a mixture of experts counts the experts a token visits;
  - a bottleneck adapter: its input and its bottleneck activation (c·h + 2c·m).

  With gradient checkpointing only each layer's input is kept (4h with fp32 weights,
  else c·h) and one layer is recomputed at a time. The output head keeps its input
  (c·h) when it trains; the loss keeps fp32 log-probabilities over the vocabulary and,
  at the start of the backward pass, two more fp32 tensors of that size: 12·V bytes per
  token that has a loss.
* the peak: with gradient accumulation, gradients of earlier micro-batches coexist with
  every activation of the current one (the sum); with one micro-batch per step, the
  activations are freed as the gradients fill in (the larger of the two).
* online RL also holds the frozen reference (unless the policy is LoRA: the base is the
  reference), the reward model (same shape as the policy assumed), PPO's value model
  (fp32 with its own AdamW, 16 bytes per parameter) and the KV cache of one generation
  chunk (2 x layers x kv_dim x c per token).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubetune.plan.setup import TrainingSetup
from kubetune.plan.shape import ModelShape

GIB = 2**30
ADAMW_BYTES = 8  # two fp32 moments
MASTER_BYTES = 4  # DeepSpeed's fp32 master copy
LOSS_BYTES_PER_VOCAB = 12  # fp32 log-probs saved + two fp32 gradients at backward start
#: target positions the trainer's chunked loss projects onto the vocabulary at once
LOSS_CHUNK_ROWS = 1024
NF4_BYTES = 0.5 + 1 / 64  # 4-bit values + (double-quantized) block constants
INT8_BYTES = 1.0 + 4 / 64


@dataclass(frozen=True)
class Part:
    """One line of the breakdown."""

    name: str
    bytes: int
    how: str


@dataclass(frozen=True)
class MemoryEstimate:
    parts: tuple[Part, ...]
    peak_bytes: int
    trainable_parameters: int
    parameters: int
    notes: tuple[str, ...] = field(default=())

    def part(self, name: str) -> int:
        return sum(p.bytes for p in self.parts if p.name == name)


@dataclass(frozen=True)
class _Params:
    total: int
    trained: int
    matmul_trained: int  # trained weights that go through a matmul (autocast copies)


def parameters_of(shape: ModelShape, setup: TrainingSetup) -> _Params:
    n, h, layers = shape.parameters, shape.hidden_size, shape.num_layers
    head = shape.vocab_size * h
    if setup.method == "reward":  # the LM head is replaced by a 1-output score head
        total = n - (0 if shape.tied_embeddings else head) + h
        trained = (
            total
            if not setup.lora_rank
            else shape.lora_parameters(setup.lora_rank, setup.lora_targets) + h
        )
        return _Params(
            total, trained, trained - shape.vocab_size * h if not setup.lora_rank else trained
        )
    if setup.lora_rank:
        lora = shape.lora_parameters(setup.lora_rank, setup.lora_targets)
        return _Params(n + lora, lora, lora)
    if setup.method == "adapter":
        m = setup.adapter_bottleneck
        adapter = layers * (2 * h * m + m + h)
        return _Params(n + adapter, adapter, layers * 2 * h * m)
    if setup.method == "prefix":
        prefix = setup.virtual_tokens * 2 * layers * h
        return _Params(n + prefix, prefix, 0)
    if setup.method == "prompt":
        prompt = setup.virtual_tokens * h
        return _Params(n + prompt, prompt, 0)
    matmul = shape.linear_parameters() + head
    return _Params(n, n, min(matmul, n))


def _fp32_weights(setup: TrainingSetup) -> bool:
    """The weights the layers compute with are fp32 (residual stream and norms too)."""
    if setup.weight_bytes:
        return setup.weight_bytes == 4
    if setup.precision == "fp32":
        return True
    return setup.strategy == "ddp" and not setup.frozen_base


def _autocast_copies(setup: TrainingSetup) -> bool:
    """fp32 weights under torch.autocast: every matmul casts its operands."""
    return setup.precision != "fp32" and setup.strategy == "ddp"


def activation_bytes_per_token_layer(shape: ModelShape, setup: TrainingSetup) -> int:
    """What autograd saves in one decoder layer, per token (see the module docstring)."""
    c = setup.compute_bytes
    h, q, kv = shape.hidden_size, shape.q_dim, shape.kv_dim
    experts = shape.experts_per_token if shape.num_experts else 1
    width = (
        shape.expert_intermediate_size * experts + shape.shared_expert_intermediate_size
        if shape.num_experts
        else shape.intermediate_size
    )
    fp32 = _fp32_weights(setup)
    trains_base = not setup.frozen_base and setup.method not in ("adapter", "prefix", "prompt")
    norm_weight = (4 if fp32 else c) * h if trains_base else 0
    total = 2 * (4 * h + norm_weight)

    # (input width, consumers, name) of each projection group; the norm-fed groups are
    # fp32 under autocast with fp32 weights, so every consumer casts its own copy.
    gated = shape.gated_mlp
    groups = (
        (h, 3, ("q_proj", "k_proj", "v_proj"), True),
        (q, 1, ("o_proj",), False),
        (
            h,
            (2 if gated else 1) * experts,
            ("gate_proj", "up_proj") if gated else ("up_proj",),
            True,
        ),
        (width, 1, ("down_proj",), False),
    )
    for width_in, consumers, names, norm_fed in groups:
        if trains_base:
            copies = consumers if (norm_fed and fp32 and _autocast_copies(setup)) else 1
            total += c * width_in * copies
        elif setup.lora_rank:
            adapted = _adapted(names, setup.lora_targets) * (consumers // len(names) or 1)
            if not adapted:
                continue
            shared = setup.precision == "fp32" and setup.lora_dropout == 0
            per = c + (setup.dropout_mask_bytes if setup.lora_dropout > 0 else 0)
            total += c * width_in if shared else per * width_in * adapted
            total += c * setup.lora_rank * adapted
    # attention kernel: q, k, v, output (+ fp32 log-sum-exp per head)
    kv_scale = (
        (setup.max_seq_length + setup.virtual_tokens) / setup.max_seq_length
        if setup.method == "prefix"
        else 1.0
    )
    total += c * (2 * q + round(2 * kv * kv_scale)) + 4 * shape.num_heads
    total += c * (3 if gated else 1) * width
    if shape.num_experts:
        total += 4 * shape.num_experts  # router logits (fp32 softmax)
    if setup.method == "adapter":
        total += (4 if setup.precision == "fp32" else c) * h + 2 * c * setup.adapter_bottleneck
    return total


def _adapted(names: tuple[str, ...], targets: tuple[str, ...]) -> int:
    if "all-linear" in targets:
        return len(names)
    return sum(1 for n in names if n in targets)


def estimate_memory(
    shape: ModelShape, setup: TrainingSetup, *, loss_token_fraction: float = 1.0
) -> MemoryEstimate:
    """Peak bytes per GPU process of ``setup`` on a model of ``shape``."""
    c, world = setup.compute_bytes, setup.world_size
    params = parameters_of(shape, setup)
    n, nt = params.total, params.trained
    base = n - nt
    stage = (
        setup.zero_stage
        if setup.strategy == "deepspeed"
        else (3 if setup.strategy == "fsdp" else 0)
    )
    offload = setup.offload
    notes: list[str] = []
    parts: list[Part] = []

    # -- weights -------------------------------------------------------------------------
    if setup.method == "qlora":
        linear = shape.linear_parameters()
        per = NF4_BYTES if setup.quantized_bits == 4 else INT8_BYTES
        base_bytes = linear * per + (base - linear) * c
        how = f"{setup.quantized_bits}-bit linear weights, the rest in {setup.precision}"
    elif setup.frozen_base or setup.method in ("adapter", "prefix", "prompt"):
        base_bytes = base * (setup.weight_bytes or c)
        how = f"frozen base, {setup.weight_bytes or c} bytes per weight"
    else:
        base_bytes = 0
        how = ""
    if setup.strategy == "deepspeed":
        trained_weight_bytes = c
    elif setup.weight_bytes and not setup.frozen_base and setup.family != "peft":
        trained_weight_bytes = setup.weight_bytes  # an explicit model.dtype trains as loaded
    else:
        trained_weight_bytes = 4  # fp32: the optimizer's master copy (PEFT adapters too)
    weights = base_bytes + nt * trained_weight_bytes
    shard_weights = stage == 3
    if shard_weights:
        weights = 0 if offload == "all" else weights / world
    parts.append(
        Part(
            "weights",
            int(weights),
            (how + "; " if how else "")
            + f"{number_of(nt)} trained in {_dtype(trained_weight_bytes, setup)}"
            + (f", sharded over {world}" if shard_weights else ""),
        )
    )

    # -- gradients and optimizer -----------------------------------------------------------
    grad_bytes = c if setup.strategy == "deepspeed" else trained_weight_bytes
    grads = nt * grad_bytes / (world if stage >= 2 else 1)
    if setup.strategy == "fsdp" and offload != "none":
        grads = 0
    parts.append(Part("gradients", int(grads), f"{grad_bytes} bytes per trained parameter"))
    if setup.strategy == "deepspeed":
        opt_per = ADAMW_BYTES + (MASTER_BYTES if c == 2 else 0)
    else:  # torch's AdamW keeps its moments in the parameters' dtype
        opt_per = 2 * trained_weight_bytes
    optimizer = nt * opt_per / (world if stage >= 1 else 1)
    if offload != "none":
        optimizer = 0
    parts.append(
        Part(
            "optimizer",
            int(optimizer),
            f"AdamW {opt_per} bytes per trained parameter"
            + (", offloaded to CPU" if offload != "none" else "")
            + (f", sharded over {world}" if stage >= 1 else ""),
        )
    )

    # -- working buffers ----------------------------------------------------------------------
    static_buffers, how_buffers = 0, []
    if setup.strategy == "ddp" and world > 1:
        static_buffers += nt * 4
        how_buffers.append("DDP gradient buckets")
    if stage == 3:
        layer = shape.layer_parameters()
        gathered = 2 * layer + (shape.embedding_parameters() if setup.strategy == "fsdp" else 0)
        static_buffers += gathered * c + (layer * 4 if setup.strategy == "fsdp" else 0)
        how_buffers.append("two layers gathered unsharded")
    if static_buffers:
        parts.append(Part("buffers", int(static_buffers), ", ".join(how_buffers)))
    fp32_trained = trained_weight_bytes == 4
    autocast = params.matmul_trained * c if _autocast_copies(setup) and fp32_trained else 0
    if autocast:
        parts.append(
            Part(
                "autocast copies", autocast, f"{setup.precision} copies of the fp32 trained weights"
            )
        )

    # -- other models (online RL) -----------------------------------------------------------
    others = 0
    if setup.family == "rl":
        load = c if setup.frozen_base and c == 2 else 4
        if not setup.lora_rank:
            others += shape.parameters * load
            parts.append(Part("reference", shape.parameters * load, "frozen copy of the policy"))
        if not setup.verifiable_reward:
            parts.append(Part("reward model", shape.parameters * load, "policy's shape assumed"))
            others += shape.parameters * load
            notes.append("reward model assumed the policy's size; pass its config for more")
        if setup.method == "ppo":
            value = shape.parameters * 16
            parts.append(Part("value model", value, "policy's shape, fp32 with AdamW"))
            others += value
        kv = 2 * shape.num_layers * shape.kv_dim * c * setup.tokens_per_micro_batch
        parts.append(Part("kv cache", kv, f"{setup.tokens_per_micro_batch:,} tokens generated"))
        others += kv

    # -- activations ---------------------------------------------------------------------------
    tokens = setup.tokens_per_micro_batch
    per_layer = activation_bytes_per_token_layer(shape, setup)
    fp32 = _fp32_weights(setup)
    trains_head = not setup.frozen_base and setup.method not in ("adapter", "prefix", "prompt")
    h = shape.hidden_size
    outside = 4 * h + ((4 if fp32 else c) * h if trains_head else 0)  # final norm
    outside += c * h if trains_head else 0  # the head's input
    if setup.gradient_checkpointing:
        kept = shape.num_layers * (4 if fp32 else c) * h + per_layer
        how_act = f"checkpointed: {shape.num_layers} layer inputs + 1 layer recomputed"
    else:
        kept = shape.num_layers * per_layer
        how_act = f"{shape.num_layers} layers x {per_layer:,} bytes per token"
    activations = tokens * (kept + outside)
    parts.append(
        Part("activations", int(activations), f"{how_act}; {tokens:,} tokens per micro-batch")
    )
    loss_tokens = 0 if setup.method == "reward" else round(tokens * loss_token_fraction)
    # the chunked loss holds one chunk of rows at a time; logit transforms keep full logits
    rows = loss_tokens if shape.logit_transform else min(loss_tokens, LOSS_CHUNK_ROWS)
    logits = rows * shape.vocab_size * LOSS_BYTES_PER_VOCAB
    chunked = " (one chunk of the loss at a time)" if rows < loss_tokens else ""
    parts.append(
        Part(
            "logits",
            logits,
            f"{rows:,} tokens x vocabulary {shape.vocab_size:,} x 12 bytes{chunked}",
        )
    )

    static = weights + optimizer + others + static_buffers
    transient = activations + logits + autocast
    if setup.gradient_accumulation_steps > 1:
        peak = static + grads + transient
    else:  # activations are freed as the gradients fill in
        peak = static + max(transient, grads)
    return MemoryEstimate(
        parts=tuple(parts),
        peak_bytes=int(peak),
        trainable_parameters=nt,
        parameters=n,
        notes=tuple(notes),
    )


def _dtype(size: int, setup: TrainingSetup) -> str:
    return "fp32" if size == 4 else setup.precision


def number_of(count: int) -> str:
    """``6.74B``, ``40.0M``, ``12,345``: parameter counts as people say them."""
    for scale, suffix in ((1e9, "B"), (1e6, "M")):
        if count >= scale:
            return f"{count / scale:.3g}{suffix}"
    return f"{count:,}"
