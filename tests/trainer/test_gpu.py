"""GPU checks (marked ``gpu``: skipped without CUDA; run by benchmarks/gpu/run.sh).

Beside these, ``test_methods.py::test_qlora_trains_on_gpu`` (QLoRA) and
``test_distributed.py::test_deepspeed_zero3_bf16_on_gpu`` (ZeRO-3 bf16) are marked too.
Two-rank NCCL needs two GPUs: NCCL refuses two ranks on one device ("Duplicate GPU
detected"), so on a one-GPU machine those tests skip with that reason and FSDP2 runs in
a world of one rank instead.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainer.helpers import (
    PYTHON,
    REPO,
    manifest,
    read_json,
    run_torchrun,
    train_in_process,
    train_log,
    trainer_env,
    write_config,
)

pytestmark = pytest.mark.gpu

TWO_GPUS = pytest.mark.skipif(
    torch.cuda.device_count() < 2,
    reason="two NCCL ranks need two GPUs (NCCL refuses two ranks on one device)",
)
WORLD_OF_ONE = REPO / "tests" / "trainer" / "gpu_fsdp_world_of_one.py"
HYPER = {"maxSteps": 3, "globalBatchSize": 8, "microBatchSize": 2, "learningRate": 1e-3}


def _doc(tiny_model: Path, data_dir: Path, out: Path, method: str = "full", **extra: Any) -> dict:
    return manifest(method, tiny_model, data_dir / "chat.jsonl", "chat", out, hyper=HYPER, **extra)


@pytest.mark.parametrize(("heads", "kv_heads"), [(8, 8), (8, 2)])
def test_flex_varlen_on_cuda_matches_per_sample_sdpa(heads: int, kv_heads: int) -> None:
    """The compiled FlexAttention path (used on GPUs without flash-attn): outputs and
    gradients equal per-sample causal SDPA on a packed bf16 row."""
    from kubetune_trainer.models import varlen_attention as va

    layout = va.PackedLayout([300, 7, 1, 129, 1000, 64])
    g = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(1, heads, layout.total, 64), *[(1, kv_heads, layout.total, 64)] * 2]
    weights = torch.randn((1, layout.total, heads, 64), device="cuda", generator=g)
    results = []
    for kernel in ("flex", "sdpa"):
        q, k, v = (
            torch.randn(
                s, device="cuda", dtype=torch.bfloat16, generator=g.manual_seed(i)
            ).requires_grad_(True)
            for i, s in enumerate(shapes)
        )
        attend = va.flex_varlen if kernel == "flex" else va.per_sample_sdpa
        out = attend(q, k, v, layout)
        (out.float() * weights).sum().backward()  # gradients of order one, not ~1e-4
        results.append([out.detach(), q.grad, k.grad, v.grad])
    for flex, sdpa in zip(*results, strict=True):
        assert flex is not None and sdpa is not None
        error = (flex.float() - sdpa.float()).norm() / sdpa.float().norm()
        assert error < 2e-2, float(error)  # bf16 rounding only
    assert len(layout._block_masks) == 1  # one BlockMask, reused by the backward


def test_full_fine_tuning_bf16_packed_on_gpu(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    """bf16 autocast on CUDA, padding-free batches through kubetune_varlen (FlexAttention)
    or flash-attention 2."""
    out = tmp_path / "out"
    doc = _doc(tiny_model, data_dir, out, dataset={"packing": True})
    doc["spec"]["hyperparameters"]["precision"] = "bf16"
    result = train_in_process(doc, tmp_path)
    assert result.final_loss is not None and math.isfinite(result.final_loss)
    assert read_json(out / "lineage.json")["training"]["precision"] == "bf16"
    assert all(math.isfinite(r["loss"]) for r in train_log(out))


def test_fsdp2_bf16_lora_world_of_one(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    doc = _doc(tiny_model, data_dir, out, "lora", distributed={"strategy": "fsdp"})
    doc["spec"]["hyperparameters"].update(precision="bf16", learningRate=1e-2)
    config = write_config(doc, tmp_path / "job.json")
    proc = subprocess.run(
        [
            PYTHON,
            str(WORLD_OF_ONE),
            str(config),
            str(tiny_model),
        ],
        env=trainer_env(config, out),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["sharded"], report  # every parameter is a DTensor shard
    assert report["logits_dtype"] == "torch.bfloat16", report  # mixed-precision policy
    assert report["trainable"] > 0 and report["state_keys"] > 0, report
    assert report["losses"][-1] < report["losses"][0], report  # LoRA learns the batch


@TWO_GPUS
def test_fsdp2_bf16_lora_two_ranks(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    doc = _doc(tiny_model, data_dir, out, "lora", distributed={"strategy": "fsdp"})
    doc["spec"]["hyperparameters"]["precision"] = "bf16"
    proc = run_torchrun(write_config(doc, tmp_path / "job.json", nproc=2), out, 2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert read_json(out / "lineage.json")["training"]["precision"] == "bf16"
    assert (out / "adapter_model.safetensors").exists()


@TWO_GPUS
def test_ddp_nccl_two_processes_match_one(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    """NCCL all-reduce: two ranks reach the weights of one process on the same batch."""
    from safetensors.torch import load_file

    runs = {}
    for nproc in (1, 2):
        out = tmp_path / f"out{nproc}"
        config = write_config(_doc(tiny_model, data_dir, out), tmp_path / f"job{nproc}.json", nproc)
        proc = run_torchrun(config, out, nproc)
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs[nproc] = load_file(str(out / "model.safetensors"))
    base = load_file(str(tiny_model / "model.safetensors"))
    moved = [k for k in base if not torch.equal(base[k], runs[2][k])]
    assert moved  # training changed the weights
    for key, value in runs[1].items():
        torch.testing.assert_close(runs[2][key], value, rtol=1e-4, atol=1e-4)


def test_qlora_with_deepspeed_zero2_on_gpu(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    """The API allows QLoRA with ZeRO-1/2 (only the LoRA weights' optimizer state and
    gradients are sharded; the 4-bit base stays whole): this is the check that it runs."""
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("deepspeed")
    out = tmp_path / "out"
    doc = _doc(tiny_model, data_dir, out, "qlora", distributed={"strategy": "deepspeed"})
    doc["spec"]["hyperparameters"]["precision"] = "bf16"
    proc = run_torchrun(write_config(doc, tmp_path / "job.json", nproc=1), out, 1)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "adapter_model.safetensors").exists()
    assert all(math.isfinite(r["loss"]) for r in train_log(out))
