"""PPO, GRPO and RLOO end to end on the tiny model: they learn a verifiable task the base
model does not solve, stay near the reference, and their guards act."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetune_trainer.assets.sample_data import count_prompt_rows, write_jsonl
from tests.trainer.helpers import (
    manifest,
    read_json,
    run_torchrun,
    train_in_process,
    train_log,
    write_config,
)

#: the format reward of the task: answer with digits (the tiny base model writes one by
#: chance in ~6% of its 3-token answers)
DIGIT = {"verifiable": {"check": "regex", "pattern": "[0-9]"}}
KL_TARGET = 10.0  # nats per response


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("prompts")
    train = write_jsonl(count_prompt_rows(48, seed=31), root / "train.jsonl")
    held_out = write_jsonl(count_prompt_rows(16, seed=32), root / "eval.jsonl")
    return train, held_out


def rl_job(
    method: str,
    model: Path,
    prompts: tuple[Path, Path],
    out: Path,
    *,
    steps: int = 30,
    rlhf: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    settings: dict[str, Any] = {"reward": DIGIT, "generation": {"maxNewTokens": 3}}
    settings.update(rlhf or {})
    return manifest(
        method,
        model,
        prompts[0],
        "promptOnly",
        out,
        eval_data=prompts[1],
        hyper={
            "maxSteps": steps,
            "globalBatchSize": 8,
            "microBatchSize": 4,
            "learningRate": 3e-3,
            "warmupRatio": 0.0,
            "scheduler": "constant",
        },
        rlhf=settings,
        **extra,
    )


METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "grpo": {},
    "rloo": {},
    # adaptive KL (Ziegler et al.) toward a target below the test's bound
    "ppo": {"ppo": {"epochs": 2}, "kl": {"adaptive": {"target": 4.0, "horizon": 200}}},
}


@pytest.mark.parametrize("method", ["grpo", "rloo", "ppo"])
def test_online_method_raises_the_held_out_reward_and_stays_near_the_reference(
    method: str, tiny_model: Path, prompts: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    steps = 40 if method == "ppo" else 30
    doc = rl_job(method, tiny_model, prompts, out, steps=steps, rlhf=METHOD_SETTINGS[method])
    result = train_in_process(doc, tmp_path)

    base, tuned = result.eval_results["base"], result.eval_results["tuned"]
    assert base["reward_mean"] <= 0.2, base  # the base model does not solve the task
    assert tuned["reward_mean"] - base["reward_mean"] >= 0.35, (base, tuned)
    assert 0.0 <= tuned["kl"] < KL_TARGET, tuned
    assert base["kl"] == pytest.approx(0.0, abs=1e-5)  # the base is its own reference

    log = train_log(out)
    assert [r["step"] for r in log] == list(range(1, steps + 1))
    for field in ("objective/kl", "objective/entropy", "policy/clipfrac", "reward/mean"):
        assert all(field in r for r in log), field
    early = sum(r["reward/mean"] for r in log[:5]) / 5
    late = sum(r["reward/mean"] for r in log[-5:]) / 5
    assert late > early + 0.3, (early, late)
    if method == "ppo":
        assert all("critic/vf_explained_var" in r for r in log)
        coefs = [r["objective/kl_coef"] for r in log]
        assert coefs[0] != coefs[-1]  # the adaptive controller moved
    exposition = (out / "metrics.prom").read_text()
    assert "kubetune_trainer_rl_objective_kl " in exposition
    assert "kubetune_trainer_rl_reward_mean " in exposition
    card = (out / "README.md").read_text()
    assert method.upper() in card or method in card


def test_kl_ceiling_stops_the_run_with_a_permanent_reason(
    tiny_model: Path, prompts: tuple[Path, Path], tmp_path: Path
) -> None:
    from kubetune_trainer.errors import NumericalDivergenceError

    out = tmp_path / "out"
    guards = {"klCeiling": 0.3, "klCeilingSteps": 2}
    doc = rl_job("grpo", tiny_model, prompts, out, steps=30, rlhf={"guards": guards})
    doc["spec"]["hyperparameters"]["learningRate"] = 1e-2
    with pytest.raises(NumericalDivergenceError, match="KL") as caught:
        train_in_process(doc, tmp_path)
    assert "0.3" in str(caught.value)
    steps = [r["step"] for r in train_log(out)]
    assert len(steps) < 30  # stopped early, not at the end


def test_invalid_mini_batches_are_refused_before_any_generation(
    tiny_model: Path, prompts: tuple[Path, Path], tmp_path: Path
) -> None:
    from kubetune_trainer.errors import InvalidConfigError

    out = tmp_path / "out"
    doc = rl_job("ppo", tiny_model, prompts, out, rlhf={"ppo": {"miniBatches": 3}})
    with pytest.raises(InvalidConfigError, match="miniBatches 3 must divide"):
        train_in_process(doc, tmp_path)
    assert not (out / "train_log.jsonl").exists()


def test_ppo_resumes_its_critic_and_kl_controller_from_a_checkpoint(
    tiny_model: Path, prompts: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    settings = {"kl": {"adaptive": {"target": 4.0, "horizon": 100}}}
    doc = rl_job("ppo", tiny_model, prompts, out, steps=4, rlhf=settings)
    doc["spec"]["checkpoint"] = {"intervalSteps": 2, "keepLast": 3}
    train_in_process(doc, tmp_path)
    checkpoint = out / "checkpoints" / "step-000000002"
    assert (checkpoint / "critic.pt").exists() and (checkpoint / "online_state.pt").exists()
    first = train_log(out)

    # Continue the same job to 6 steps: it resumes from step 4 with the saved controller.
    doc["spec"]["hyperparameters"]["maxSteps"] = 6
    result = train_in_process(doc, tmp_path)
    assert result.resumed_from == 4
    log = train_log(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    # step 5 starts from step 4's coefficient (restored), not from the initial 0.05
    error = min(max(log[4]["objective/kl"] / 4.0 - 1, -0.2), 0.2)
    expected = first[3]["objective/kl_coef"] * (1 + error * 8 / 100)
    assert log[4]["objective/kl_coef"] == pytest.approx(expected, rel=1e-6)
    assert first[3]["objective/kl_coef"] != pytest.approx(0.05, rel=1e-6)


def test_distributed_ppo_on_two_processes(
    tiny_model: Path, prompts: tuple[Path, Path], tmp_path: Path
) -> None:
    """DDP for the policy, an all-reduce per update for the critic, global statistics."""
    out = tmp_path / "out"
    doc = rl_job("ppo", tiny_model, prompts, out, steps=3, rlhf={"ppo": {"miniBatches": 1}})
    doc["spec"]["resources"] = {"nodes": 1, "gpusPerNode": 2}
    config = write_config(doc, tmp_path / "job.json", nproc=2)
    proc = run_torchrun(config, out, 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = train_log(out)
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(0.0 <= r["reward/mean"] <= 1.0 and "critic/vf_explained_var" in r for r in log)
    assert "rank 1" not in proc.stderr or "Traceback" not in proc.stderr
    assert (out / "model.safetensors").exists()
    assert read_json(out / "eval_results.json")["tuned"]["prompts"] == 16


def test_ppo_with_a_lora_policy_uses_the_base_as_reference_and_writes_an_adapter(
    tiny_model: Path, prompts: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    lora = {"lora": {"r": 8, "alpha": 16, "dropout": 0.0}}
    doc = rl_job("ppo", tiny_model, prompts, out, steps=6, peft=lora)
    doc["spec"]["hyperparameters"]["learningRate"] = 2e-2
    result = train_in_process(doc, tmp_path)
    assert (out / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
    assert result.eval_results["base"]["kl"] == pytest.approx(0.0, abs=1e-5)
    log = train_log(out)
    assert log[0]["objective/kl"] == pytest.approx(0.0, abs=1e-4)  # LoRA B starts at 0
    assert max(r["objective/kl"] for r in log) > 1e-3  # the adapter moved the policy
    assert "LoRA adapter" in (out / "README.md").read_text()


def test_validation_shows_memory_per_role_and_refuses_a_causal_lm_as_reward_model(
    tiny_model: Path, prompts: tuple[Path, Path], tmp_path: Path
) -> None:
    from kubetune.contract import ExitCode
    from tests.trainer.helpers import run_trainer

    out = tmp_path / "out"
    doc = rl_job("ppo", tiny_model, prompts, out)
    config = write_config(doc, tmp_path / "job.json")
    proc = run_trainer(config, out, "--validate-only")
    assert proc.returncode == ExitCode.SUCCESS, proc.stderr[-2000:]
    for role in ("policy", "reference", "value", "kv-cache"):
        assert f"{role} " in proc.stdout.split("memory per process", 1)[1], proc.stdout
    assert "reward 0.00 GiB" not in proc.stdout  # a verifiable reward loads no model

    doc["spec"]["rlhf"]["reward"] = {"model": str(tiny_model)}  # an SFT model, not an RM
    config = write_config(doc, tmp_path / "job.json")
    proc = run_trainer(config, out, "--validate-only")
    assert proc.returncode == ExitCode.INVALID_CONFIG
    assert "not a sequence classifier" in proc.stdout + proc.stderr
