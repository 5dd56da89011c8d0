"""Two CPU processes through torchrun (gloo): DDP, FSDP2 and DeepSpeed ZeRO-2/3.

Each strategy must reach the same weights as a single process on the same global batch
(the loss is normalised over the global batch, so the split over ranks and
micro-batches does not change the update), up to float summation order.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.trainer.helpers import manifest, read_json, run_torchrun, train_in_process, write_config

HYPER = {
    "maxSteps": 3,
    "globalBatchSize": 8,
    "microBatchSize": 2,
    "learningRate": 1e-3,
    "warmupRatio": 0.0,
}


def _doc(
    tiny_model: Path, data_dir: Path, out: Path, method: str = "full", **extra: object
) -> dict:
    return manifest(
        method,
        tiny_model,
        data_dir / "chat.jsonl",
        "chat",
        out,
        eval_data=data_dir / "chat_eval.jsonl",
        hyper=HYPER,
        **extra,
    )


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    name = (
        "model.safetensors" if (out / "model.safetensors").exists() else "adapter_model.safetensors"
    )
    return {k: v.float() for k, v in load_file(str(out / name)).items()}


@pytest.fixture(scope="module")
def single_process(
    tiny_model: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    work = tmp_path_factory.mktemp("single")
    out = work / "out"
    train_in_process(_doc(tiny_model, data_dir, out), work)
    return out


def _assert_same_weights(out: Path, reference: Path, base: Path, atol: float = 2e-5) -> None:
    a, b = _weights(out), _weights(reference)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=atol, msg=key)
    start = _weights(base)  # and training really changed the weights
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-4


@pytest.mark.parametrize(
    "distributed",
    [
        pytest.param({"strategy": "ddp"}, id="ddp"),
        pytest.param({"strategy": "fsdp"}, id="fsdp"),
        pytest.param({"strategy": "deepspeed", "zeroStage": 1}, id="zero1"),
        pytest.param({"strategy": "deepspeed", "zeroStage": 2}, id="zero2"),
        pytest.param({"strategy": "deepspeed", "zeroStage": 3}, id="zero3"),
    ],
)
def test_two_processes_match_single_process(
    distributed: dict, tiny_model: Path, data_dir: Path, tmp_path: Path, single_process: Path
) -> None:
    out = tmp_path / "out"
    doc = _doc(tiny_model, data_dir, out, distributed=distributed)
    proc = run_torchrun(write_config(doc, tmp_path / "job.json", nproc=2), out, 2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    _assert_same_weights(out, single_process, tiny_model)
    lineage = read_json(out / "lineage.json")
    expected_engine = (
        "deepspeed" if distributed["strategy"] == "deepspeed" else distributed["strategy"]
    )
    assert lineage["training"]["engine"] == expected_engine
    assert lineage["training"]["worldSize"] == 2
    single = read_json(single_process / "eval_results.json")["tuned"]["loss"]
    assert read_json(out / "eval_results.json")["tuned"]["loss"] == pytest.approx(single, rel=1e-4)
    checkpoint = read_json(out / "checkpoints" / "step-000000003" / "engine.json")
    if distributed["strategy"] == "deepspeed":  # the generated config, from the spec
        zero = checkpoint["deepspeed"]["zero_optimization"]
        assert zero["stage"] == distributed["zeroStage"]
        assert checkpoint["deepspeed"]["gradient_accumulation_steps"] == 2
        assert checkpoint["deepspeed"]["train_micro_batch_size_per_gpu"] == 2


@pytest.mark.parametrize(
    "distributed",
    [
        pytest.param({"strategy": "fsdp"}, id="fsdp"),
        pytest.param({"strategy": "deepspeed", "zeroStage": 3}, id="zero3"),
    ],
)
def test_sharded_lora_saves_only_the_adapter(
    distributed: dict, tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    """PEFT under sharding: the adapter is gathered from the shards and saved alone."""
    out = tmp_path / "out"
    doc = _doc(
        tiny_model,
        data_dir,
        out,
        method="lora",
        distributed=distributed,
        peft={"lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
    )
    doc["spec"]["hyperparameters"]["learningRate"] = 1e-2
    proc = run_torchrun(write_config(doc, tmp_path / "job.json", nproc=2), out, 2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    weights = _weights(out)
    assert weights and all("lora_" in key for key in weights)
    assert max(float(v.abs().max()) for k, v in weights.items() if "lora_B" in k) > 0  # trained
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out)  # loads


def test_ddp_lora_resume_reaches_the_uninterrupted_weights(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    """A 2-rank DDP LoRA run preempted after step 2 and restarted ends with the weights of
    the same run left uninterrupted. LoRA dropout is on, so each rank's restored RNG state
    matters (the test fails with the RNG restore skipped); same world size and kernels, so
    the only allowed difference is float noise: atol 1e-6, while training moves LoRA B
    (zero at the start) by more than 1e-3."""
    lora = {"lora": {"r": 4, "alpha": 8, "dropout": 0.1}}
    straight = tmp_path / "straight" / "out"
    straight.parent.mkdir()
    doc = _doc(tiny_model, data_dir, straight, method="lora", peft=lora)
    proc = run_torchrun(write_config(doc, straight.parent / "job.json", nproc=2), straight, 2)
    assert proc.returncode == 0, proc.stderr[-4000:]

    out = tmp_path / "resumed" / "out"
    out.parent.mkdir()
    doc = _doc(tiny_model, data_dir, out, method="lora", peft=lora)
    config = write_config(doc, out.parent / "job.json", nproc=2)
    first = run_torchrun(config, out, 2, KUBETUNE_STOP_AFTER_STEP="2")
    assert first.returncode != 0  # torchrun reports the worker failure (75 via the launcher)
    assert (out / "checkpoints" / "step-000000002" / "COMPLETE").exists()
    second = run_torchrun(config, out, 2)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "resumed from" in second.stderr
    assert read_json(out / "lineage.json")["training"]["resumedFromStep"] == 2

    resumed, uninterrupted = _weights(out), _weights(straight)
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=0, atol=1e-6, msg=key)
    trained = max(float(v.abs().max()) for k, v in resumed.items() if "lora_B" in k)
    assert trained > 1e-3  # LoRA B starts at zero: training moved it


@pytest.mark.parametrize(
    "distributed",
    [
        pytest.param({"strategy": "fsdp"}, id="fsdp"),
        pytest.param({"strategy": "deepspeed", "zeroStage": 3}, id="zero3"),
    ],
)
def test_sharded_resume_reaches_the_uninterrupted_weights(
    distributed: dict, tiny_model: Path, data_dir: Path, tmp_path: Path, single_process: Path
) -> None:
    """Preempted after step 1, restarted: sharded model+optimizer state and RNG restore
    exactly, so the result equals the uninterrupted single-process run."""
    out = tmp_path / "out"
    doc = _doc(tiny_model, data_dir, out, distributed=distributed)
    config = write_config(doc, tmp_path / "job.json", nproc=2)
    first = run_torchrun(config, out, 2, KUBETUNE_STOP_AFTER_STEP="1")
    assert first.returncode != 0
    assert (out / "checkpoints" / "step-000000001" / "COMPLETE").exists()
    second = run_torchrun(config, out, 2)
    assert second.returncode == 0, second.stderr[-4000:]
    assert read_json(out / "lineage.json")["training"]["resumedFromStep"] == 1
    _assert_same_weights(out, single_process, tiny_model)


@pytest.mark.gpu
def test_deepspeed_zero3_bf16_on_gpu(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    out = tmp_path / "out"
    doc = _doc(tiny_model, data_dir, out, distributed={"strategy": "deepspeed", "zeroStage": 3})
    doc["spec"]["hyperparameters"]["precision"] = "bf16"
    nproc = min(2, torch.cuda.device_count())
    proc = run_torchrun(write_config(doc, tmp_path / "job.json", nproc=nproc), out, nproc)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert read_json(out / "lineage.json")["training"]["precision"] == "bf16"
