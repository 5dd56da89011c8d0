"""Memory per role of colocated online RL: the arithmetic, by hand."""

from __future__ import annotations

from types import SimpleNamespace

from kubetune_trainer.rl.memory import GIB, ModelShape, describe, estimate_roles

# 7B-like Llama: hidden 4096, intermediate 11008, 32 layers, 32 KV heads of 128
LLAMA = SimpleNamespace(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=32,
)  # fmt: skip


def test_shape_reads_the_config_and_counts_lora_parameters() -> None:
    shape = ModelShape.from_config(LLAMA, 6_738_415_616)
    assert (shape.head_dim, shape.num_kv_heads, shape.num_layers) == (128, 32, 32)
    # per layer: q, o (4096+4096) each; k, v (4096+4096) each; gate, up (4096+11008) each;
    # down (11008+4096) -> r x 4 x 8192 + r x 3 x 15104 = r x 78080; x 32 layers
    assert shape.lora_parameters(16) == 16 * 78080 * 32 == 39_976_960
    # K and V x 32 layers x 32 heads x 128 x 2 bytes = 512 KiB per token
    assert shape.kv_bytes_per_token(2) == 524_288


def test_ppo_full_weights_holds_four_models_and_the_cache() -> None:
    policy = ModelShape.from_config(LLAMA, 7_000_000_000)
    reward = ModelShape.from_config(LLAMA, 1_000_000_000)
    roles = estimate_roles(
        policy,
        dtype_bytes=2,
        lora_rank=None,
        reward=reward,
        value=reward,
        sequences_per_chunk=8,
        tokens_per_sequence=1024,
    )
    got = {r.role: r.bytes for r in roles}
    assert got == {
        "policy": 112_000_000_000,  # 16 bytes x 7e9
        "reference": 14_000_000_000,  # bf16 copy
        "reward": 2_000_000_000,
        "value": 16_000_000_000,
        "kv-cache": 524_288 * 8 * 1024,  # 4 GiB
    }
    assert got["kv-cache"] == 4 * GIB
    line = describe(roles)
    assert "reference 13.04 GiB (frozen copy of the base)" in line
    assert line.endswith(f"total {sum(got.values()) / GIB:.2f} GiB")


def test_grpo_with_lora_and_a_verifiable_reward_holds_the_base_once() -> None:
    policy = ModelShape.from_config(LLAMA, 7_000_000_000)
    roles = estimate_roles(
        policy,
        dtype_bytes=2,
        lora_rank=16,
        reward=None,
        value=None,
        sequences_per_chunk=4,
        tokens_per_sequence=512,
    )
    got = {r.role: r.bytes for r in roles}
    assert got == {
        "policy": 14_000_000_000 + 39_976_960 * 16,
        "reference": 0,
        "kv-cache": 524_288 * 4 * 512,
    }
