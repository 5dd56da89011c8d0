"""The memory formulas against values computed by hand (see kubetune/plan/memory.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kubetune.plan import ModelShape, TrainingSetup, estimate_memory
from kubetune.plan.memory import LOSS_CHUNK_ROWS, activation_bytes_per_token_layer

# A small Llama: h=64, 2 layers, 4 heads of 16 (2 KV), MLP 128, vocabulary 100.
SHAPE = ModelShape.from_config(
    {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 100,
        "tie_word_embeddings": False,
    }
)
H, L, Q, KV, FF, V = 64, 2, 64, 32, 128, 100
LAYER = H * Q + 2 * H * KV + Q * H + 3 * H * FF + 2 * H  # 36,992
N = L * LAYER + 2 * V * H + H  # 86,848
LINEAR = L * (H * Q + 2 * H * KV + Q * H + 3 * H * FF)

FULL = TrainingSetup(
    method="full",
    precision="fp32",
    strategy="ddp",
    zero_stage=0,
    offload="none",
    world_size=1,
    micro_batch_size=2,
    gradient_accumulation_steps=4,
    max_seq_length=10,
    gradient_checkpointing=False,
    device="cpu",
)
TOKENS = 20


def test_parameter_count_by_hand() -> None:
    assert SHAPE.parameters == N == 86_848


def test_full_fp32_by_hand() -> None:
    per_layer = (
        2 * (4 * H + 4 * H)  # each RMSNorm: fp32 input + normalised value (weight trains)
        + 4 * (H + Q + H + FF)  # inputs of q/k/v, o, gate/up, down (weights train)
        + 4 * (2 * Q + 2 * KV)  # attention: q, k, v, output
        + 4 * 4  # log-sum-exp per head
        + 4 * 3 * FF  # gate output, its activation, up output
    )
    assert activation_bytes_per_token_layer(SHAPE, FULL) == per_layer
    est = estimate_memory(SHAPE, FULL)
    assert est.part("weights") == 4 * N
    assert est.part("gradients") == 4 * N
    assert est.part("optimizer") == 8 * N
    outside = 4 * H + 4 * H + 4 * H  # final norm (input, normalised) and the head's input
    assert est.part("activations") == TOKENS * (L * per_layer + outside)
    assert est.part("logits") == TOKENS * V * 12
    assert est.peak_bytes == 16 * N + est.part("activations") + est.part("logits")


def test_one_micro_batch_per_step_frees_activations_as_gradients_fill() -> None:
    one = replace(FULL, gradient_accumulation_steps=1)
    est = estimate_memory(SHAPE, one)
    transient = est.part("activations") + est.part("logits")
    assert est.peak_bytes == 12 * N + max(transient, 4 * N)
    assert est.peak_bytes < estimate_memory(SHAPE, FULL).peak_bytes


def test_gradient_checkpointing_keeps_layer_inputs_and_one_layer() -> None:
    ckpt = replace(FULL, gradient_checkpointing=True)
    per_layer = activation_bytes_per_token_layer(SHAPE, FULL)
    est = estimate_memory(SHAPE, ckpt)
    assert est.part("activations") == TOKENS * (L * 4 * H + per_layer + 12 * H)


def test_bf16_ddp_adds_autocast_copies_and_buckets_on_several_gpus() -> None:
    bf16 = replace(FULL, precision="bf16", device="cuda")
    est = estimate_memory(SHAPE, bf16)
    assert est.part("autocast copies") == 2 * (LINEAR + V * H)
    assert est.part("buffers") == 0
    eight = estimate_memory(SHAPE, replace(bf16, world_size=8))
    assert eight.part("buffers") == 4 * N  # DDP gradient buckets
    # q/k/v and gate/up each cast their fp32 input: 3 + 2 bf16 copies, not one
    per = activation_bytes_per_token_layer(SHAPE, bf16)
    plain = activation_bytes_per_token_layer(SHAPE, replace(bf16, strategy="fsdp"))
    assert per - plain == 2 * H * (3 - 1) + 2 * H * (2 - 1) + 2 * 2 * H  # + norm values fp32


def test_zero_stages_shard_what_they_promise() -> None:
    ds = replace(FULL, precision="bf16", strategy="deepspeed", world_size=4, device="cuda")
    z1 = estimate_memory(SHAPE, replace(ds, zero_stage=1))
    assert z1.part("weights") == 2 * N and z1.part("gradients") == 2 * N
    assert z1.part("optimizer") == 12 * N // 4  # fp32 master + two moments
    z2 = estimate_memory(SHAPE, replace(ds, zero_stage=2))
    assert z2.part("gradients") == 2 * N // 4
    z3 = estimate_memory(SHAPE, replace(ds, zero_stage=3))
    assert z3.part("weights") == 2 * N // 4
    off = estimate_memory(SHAPE, replace(ds, zero_stage=3, offload="optimizer"))
    assert off.part("optimizer") == 0


def test_zero_paper_16_bytes_per_parameter() -> None:
    # ZeRO (Rajbhandari et al. 2020), section 3.1: mixed-precision Adam keeps 2 + 2 + 12
    # bytes per parameter, so a 7.5B model needs 120 GB before activations.
    ds = replace(FULL, precision="bf16", strategy="deepspeed", zero_stage=1, device="cuda")
    est = estimate_memory(SHAPE, ds)
    states = est.part("weights") + est.part("gradients") + est.part("optimizer")
    assert states == 16 * N


def test_lora_trains_only_the_adapter_on_a_half_precision_base() -> None:
    lora = replace(FULL, method="lora", precision="bf16", lora_rank=4, device="cuda")
    adapter = SHAPE.lora_parameters(4, ("all-linear",))
    est = estimate_memory(SHAPE, lora)
    assert est.trainable_parameters == adapter
    assert est.part("weights") == 2 * N + 4 * adapter
    assert est.part("optimizer") == 8 * adapter
    # the base's matmuls save nothing: only norms, attention, MLP element-wise, adapters
    per = activation_bytes_per_token_layer(SHAPE, lora)
    lora_inputs = 2 * (3 * H + Q + 2 * H + FF) + 2 * 4 * 7  # bf16 copy per adapted proj + r
    assert per == 2 * 4 * H + lora_inputs + 2 * (2 * Q + 2 * KV) + 16 + 2 * 3 * FF


def test_qlora_stores_linear_weights_in_four_bits() -> None:
    q = replace(FULL, method="qlora", precision="bf16", lora_rank=4, quantized_bits=4)
    adapter = SHAPE.lora_parameters(4, ("all-linear",))
    est = estimate_memory(SHAPE, q)
    expected = LINEAR * (0.5 + 1 / 64) + (N - LINEAR) * 2 + 4 * adapter
    assert est.part("weights") == pytest.approx(expected, abs=1)


def test_online_rl_counts_reference_reward_value_and_kv_cache() -> None:
    ppo = replace(FULL, method="ppo", precision="bf16", samples_per_prompt=1, max_new_tokens=6)
    est = estimate_memory(SHAPE, ppo)
    assert est.part("reference") == 4 * N  # full policy: loaded in fp32
    assert est.part("value model") == 16 * N
    assert est.part("kv cache") == 2 * L * KV * 2 * 2 * (10 + 6)
    lora = estimate_memory(SHAPE, replace(ppo, lora_rank=4, method="ppo"))
    assert lora.part("reference") == 0, "the base under the adapter is the reference"


def test_the_chunked_loss_holds_one_chunk_of_logits_unless_logits_are_transformed() -> None:
    long = replace(FULL, micro_batch_size=8, max_seq_length=4096)  # 32,768 loss tokens
    chunked = estimate_memory(SHAPE, long)
    assert chunked.part("logits") == LOSS_CHUNK_ROWS * V * 12
    softcapped = estimate_memory(replace(SHAPE, logit_transform=True), long)
    assert softcapped.part("logits") == 8 * 4096 * V * 12
    assert ModelShape.from_config(
        {
            "hidden_size": 8,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "vocab_size": 16,
            "final_logit_softcapping": 30.0,
        }
    ).logit_transform
