"""A sabotaged reward model that pays for length trips the length guard (SFT -> RM -> GRPO).

The policy is first taught to answer in one word (SFT), a reward model is trained on
pairs where the longer answer always wins, and GRPO against it learns to stop ending
its answers: the mean response length leaves the band around the first steps' baseline
and the guard says so in the progress document and in Prometheus, with the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

from kubetune_trainer.assets.sample_data import count_prompt_rows, write_jsonl
from tests.trainer.helpers import manifest, train_in_process, train_log


def test_length_paying_reward_model_trips_the_length_guard(
    tiny_model: Path, tmp_path: Path
) -> None:
    rows = count_prompt_rows(48, seed=41)
    sft_data = write_jsonl(
        [{"prompt": r["prompt"], "completion": " yes"} for r in rows], tmp_path / "sft.jsonl"
    )
    long_wins = [
        {"prompt": r["prompt"], "chosen": " yes yes yes yes yes yes yes yes", "rejected": " yes"}
        for r in rows
    ]
    pref_data = write_jsonl(long_wins, tmp_path / "pref.jsonl")
    # an independent judge that prefers the brief answer: the held-out reward model
    short_wins = [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} for p in long_wins]
    judge_data = write_jsonl(short_wins, tmp_path / "judge.jsonl")
    prompts = write_jsonl(rows, tmp_path / "prompts.jsonl")
    hp = {
        "maxSteps": 30,
        "globalBatchSize": 8,
        "microBatchSize": 4,
        "learningRate": 3e-3,
        "warmupRatio": 0.0,
        "scheduler": "constant",
    }
    sft, rm, rl = tmp_path / "sft", tmp_path / "rm", tmp_path / "rl"
    sft_job = manifest("full", tiny_model, sft_data, "promptCompletion", sft, hyper=hp)
    train_in_process(sft_job, tmp_path)
    rm_job = manifest("reward", tiny_model, pref_data, "preference", rm, hyper=hp)
    train_in_process(rm_job, tmp_path)
    judge = tmp_path / "judge"
    judge_job = manifest("reward", tiny_model, judge_data, "preference", judge, hyper=hp)
    train_in_process(judge_job, tmp_path)

    rlhf = {
        "reward": {"model": str(rm)},
        "generation": {"maxNewTokens": 12},
        "guards": {
            "lengthDriftRatio": 2.0,
            "lengthBaselineSteps": 3,
            "lengthDriftSteps": 2,
            "heldOutRewardModel": str(judge),
            "divergenceWindow": 4,
        },
    }
    rl_hp = dict(hp, maxSteps=16, learningRate=5e-4)
    doc = manifest("grpo", sft, prompts, "promptOnly", rl, hyper=rl_hp, rlhf=rlhf)
    train_in_process(doc, tmp_path)

    log = train_log(rl)
    baseline = sum(r["response_length/mean"] for r in log[:3]) / 3
    assert baseline < 6.0  # the SFT policy answers briefly
    assert max(r["response_length/mean"] for r in log) > 2.0 * baseline
    warnings = json.loads((rl / "progress.json").read_text())["warnings"]
    length = [w for w in warnings if "length bias of the reward model" in w]
    assert len(length) == 1, warnings  # one warning per episode, not one per step
    assert f"baseline {baseline:.1f}" in length[0]
    # the training reward rises while the independent judge's score falls
    diverged = [w for w in warnings if "held-out reward-model score fell" in w]
    assert diverged, warnings  # one per episode: it re-arms once the scores agree again
    heldout = [r["heldout_reward/mean"] for r in log]
    assert heldout[-1] < heldout[0]
    exposition = (rl / "metrics.prom").read_text()
    assert 'kubetune_trainer_rl_guard_warnings_total{guard="length_drift"} 1.0' in exposition
    divergence = f"{len(diverged)}.0"
    assert (
        f'kubetune_trainer_rl_guard_warnings_total{{guard="reward_divergence"}} {divergence}'
        in (exposition)
    )

    # lineage runs through every stage into the final model card
    lineage = json.loads((rl / "lineage.json").read_text())
    assert lineage["upstream"]["model"]["job"]["method"] == "full"
    assert lineage["upstream"]["model"]["outputDirectory"] == str(sft)
    assert lineage["upstream"]["rewardModel"]["job"]["method"] == "reward"
    assert lineage["upstream"]["rewardModel"]["datasets"][0]["uri"] == str(pref_data)
    card = (rl / "README.md").read_text()
    assert f"- started from: `{sft}`" in card and f"- reward model: `{rm}`" in card
