"""Model FLOPs utilisation and accelerator memory: computed only where they mean something."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from kubetune_trainer.metrics import TrainerMetrics, peak_flops


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H200", 989e12),
        ("NVIDIA GH200 480GB", 989e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L40", 181e12),
        ("Tesla T4", None),  # no bf16 tensor cores: no MFU rather than a wrong one
        ("NVIDIA GeForce RTX 3090", None),
    ],
)
def test_peak_table(name: str, peak: float | None) -> None:
    assert peak_flops(name) == peak


def _value(m: TrainerMetrics, name: str) -> float | None:
    for row in generate_latest(m.registry).decode().splitlines():
        if row.startswith(name + " "):
            return float(row.split()[1])
    return None


def test_mfu_is_six_n_tokens_per_gpu_over_peak() -> None:
    m = TrainerMetrics()
    m.record_mfu(1e5)
    assert _value(m, "kubetune_trainer_model_flops_utilization_ratio") is None, "no peak yet"
    m.configure_mfu(parameters=1_000_000_000, world_size=4, peak=989e12)
    m.record_mfu(1e5)  # tokens/s of the whole gang
    mfu = _value(m, "kubetune_trainer_model_flops_utilization_ratio")
    assert mfu == pytest.approx(6e9 * 1e5 / 4 / 989e12)
    m.record_mfu(1e12)
    assert _value(m, "kubetune_trainer_model_flops_utilization_ratio") == 1.0, "a ratio: <= 1"


def test_cpu_device_gets_no_mfu() -> None:
    import torch

    m = TrainerMetrics()
    m.set_flops_model(1_000_000, torch.device("cpu"), 1)
    m.record_mfu(1e6)
    assert _value(m, "kubetune_trainer_model_flops_utilization_ratio") is None


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device")
def test_cuda_peak_memory_and_mfu_on_a_real_gpu() -> None:
    import torch

    device = torch.device("cuda", 0)
    m = TrainerMetrics()
    m.set_flops_model(1_000_000_000, device, 1)
    x = torch.ones(64 * 2**20, device=device)  # 256 MiB
    m.record_memory("cuda")
    m.record_mfu(1e4)
    del x
    peak = _value(m, "kubetune_trainer_accelerator_memory_peak_bytes")
    assert peak is not None and peak >= 256 * 2**20
    known = peak_flops(torch.cuda.get_device_name(device)) is not None
    mfu = _value(m, "kubetune_trainer_model_flops_utilization_ratio")
    assert (mfu is not None and 0 < mfu < 1) if known else mfu is None


def test_loss_and_rates_are_absent_until_the_first_step() -> None:
    """A gang still loading its model exports no loss, learning rate, grad norm or rate (a
    0 would dip the panels at every restart and drag the loss averages the alerts use)."""
    m = TrainerMetrics()
    names = (
        "kubetune_trainer_loss",
        "kubetune_trainer_learning_rate",
        "kubetune_trainer_grad_norm",
        "kubetune_trainer_tokens_per_second",
        "kubetune_trainer_samples_per_second",
    )
    assert all(_value(m, n) is None for n in names)
    for gauge in (m.loss, m.learning_rate, m.grad_norm, m.tokens_per_second):
        gauge.set(0.5)
    m.samples_per_second.set(4.0)
    assert [_value(m, n) for n in names] == [0.5, 0.5, 0.5, 0.5, 4.0]
