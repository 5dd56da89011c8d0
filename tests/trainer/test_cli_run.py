"""``kubetune run examples/local/lora-sft.yaml --local`` end to end (2 CPU processes)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from kubetune.contract.display import answer_text, prompt_text
from tests.trainer.helpers import PYTHON, REPO, trainer_env


def _kubetune(
    *args: str, env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "kubetune.cli.main", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _env(tmp_path: Path) -> dict[str, str]:
    env = trainer_env(tmp_path / "unused.json", tmp_path / "unused")
    for key in (
        "KUBETUNE_CONFIG",
        "KUBETUNE_OUTPUT_DIR",
        "KUBETUNE_METRICS_PORT",
        "KUBETUNE_TERMINATION_LOG",
    ):
        env.pop(key)
    env["COLUMNS"] = "200"
    return env


def test_local_lora_example_end_to_end(tmp_path: Path) -> None:
    out, cache = tmp_path / "run", tmp_path / "cache"
    proc = _kubetune(
        "run",
        "examples/local/lora-sft.yaml",
        "--local",
        "--output-dir",
        str(out),
        "--cache-dir",
        str(cache),
        env=_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "built the tiny example model" in proc.stderr
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    results = json.loads((out / "eval_results.json").read_text())
    assert results["tuned"]["loss"] < results["base"]["loss"] - 0.1
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["training"]["worldSize"] == 2 and lineage["training"]["engine"] == "ddp"
    assert len(lineage["baseModel"]["sha256"]) == 64
    assert all(len(d["sha256"]) == 64 for d in lineage["datasets"])
    assert lineage["job"]["configHash"] and lineage["software"]["versions"]["torch"]
    card = (out / "README.md").read_text()
    assert (
        "library_name: peft" in card
        and "## Evaluation" in card
        and lineage["baseModel"]["sha256"] in card
    )
    assert "kubetune_trainer_steps_total 75.0" in (out / "metrics.prom").read_text()
    progress = json.loads((out / "progress.json").read_text())
    assert progress["state"] == "done" and progress["step"] == progress["totalSteps"] == 75

    # a second run resumes from the final checkpoint: no steps are repeated
    again = _kubetune(
        "run",
        "examples/local/lora-sft.yaml",
        "--local",
        "--output-dir",
        str(out),
        "--cache-dir",
        str(cache),
        env=_env(tmp_path),
    )
    assert again.returncode == 0, again.stderr[-4000:]
    assert "built the tiny example model" not in again.stderr  # cached
    assert "resuming from step 75" in again.stderr
    assert json.loads((out / "lineage.json").read_text())["training"]["resumedFromStep"] == 75


def test_local_validate_only_and_errors(tmp_path: Path) -> None:
    env = _env(tmp_path)
    common = ["--output-dir", str(tmp_path / "v"), "--cache-dir", str(tmp_path / "cache")]
    ok = _kubetune("run", "examples/local/dpo.yaml", "--local", "--validate-only", *common, env=env)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "validation passed" in ok.stderr
    assert "estimated peak memory" in ok.stderr, "kubetune plan's estimate, for people"
    assert "kubetune-plan" not in ok.stderr, "the operator's JSON line is not shown"
    no_local = _kubetune("run", "examples/local/dpo.yaml", env=env)
    assert no_local.returncode == 2 and "--local" in no_local.stdout + no_local.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (REPO / "examples/local/dpo.yaml").read_text().replace("method: dpo", "method: lora")
    )
    refused = _kubetune("run", str(bad), "--local", *common, env=env)
    assert refused.returncode == 78 and "preference" in refused.stderr


def _noise_free(stderr: str) -> None:
    """torchrun's worker dump and a bar without a total are not for people to read."""
    for noise in ("Traceback", "Root Cause", "ChildFailedError", "None steps"):
        assert noise not in stderr, stderr[-3000:]


def test_local_failures_say_one_clean_thing_and_a_rerun_says_it_resumes(tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "run"
    manifest = tmp_path / "job.yaml"
    manifest.write_text(
        (REPO / "examples/local/lora-sft.yaml")
        .read_text()
        .replace("pvc://datasets/sample-chat/train.jsonl", "pvc://datasets/mixed/train.jsonl")
        .replace("    eval: pvc://datasets/sample-chat/eval.jsonl\n", "")
    )
    data = cache / "pvc" / "datasets" / "mixed" / "train.jsonl"
    data.parent.mkdir(parents=True)
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    good = json.dumps({"messages": turns})
    data.write_text("\n".join([good, '{"messages": "not a list"}', good, "{broken"] + [good] * 60))
    common = ["--local", "--output-dir", str(out), "--cache-dir", str(cache)]

    bad = _kubetune("run", str(manifest), *common, env=_env(tmp_path))
    assert bad.returncode == 65
    assert "failed (invalid data): 2 of 64 train rows are invalid" in bad.stderr
    assert "train.jsonl:2" in bad.stderr
    assert "train.jsonl:4" in bad.stderr
    _noise_free(bad.stderr)

    data.write_text("\n".join([good] * 64))
    stop_env = _env(tmp_path) | {"KUBETUNE_STOP_AFTER_STEP": "2"}
    stopped = _kubetune("run", str(manifest), *common, "--max-steps", "4", env=stop_env)
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    assert "stopped: stopped by KUBETUNE_STOP_AFTER_STEP=2 at step 2/4" in stopped.stderr
    assert "step-000000002 is complete" in stopped.stderr
    assert "local-lora-sft: stopped" in stopped.stderr
    assert "run the same command again to resume" in stopped.stderr
    _noise_free(stopped.stderr)

    resumed = _kubetune("run", str(manifest), *common, "--max-steps", "4", env=_env(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step 2" in resumed.stderr
    _noise_free(resumed.stderr)


def test_shipped_sample_data_is_reproducible(tmp_path: Path) -> None:
    from kubetune_trainer.assets.fixtures import write_sample_files

    for generated in write_sample_files(tmp_path):
        shipped = REPO / "examples" / "data" / generated.name
        assert shipped.read_bytes() == generated.read_bytes(), generated.name
    total = sum(p.stat().st_size for p in (REPO / "examples" / "data").iterdir())
    assert total < 400_000


def test_demo_learns_the_task_and_shows_before_and_after(tmp_path: Path) -> None:
    """`make demo`'s job: from the small pre-trained base, LoRA learns the short-list tasks;
    the held-out prompts are shown base | tuned | expected in the terminal and the card."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    proc = _kubetune(
        "run",
        "examples/local/demo.yaml",
        "--local",
        "--output-dir",
        str(out),
        "--cache-dir",
        str(cache),
        env=_env(tmp_path),
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "built the small base model" in proc.stderr
    assert "before and after: held-out-tasks" in proc.stderr
    assert "┃ prompt" in proc.stderr and "┃ expected" in proc.stderr
    for leftover in (".0000", "epochs 3.0", " 0.0 s"):
        assert leftover not in proc.stderr, leftover

    report = json.loads((out / "evaluation.json").read_text())
    exact = {m["name"]: m for m in report["metrics"]}["held-out-tasks/exactMatch"]
    # the base cannot do the tasks; the tuned model does a good part of them
    assert exact["baseline"] <= 0.1 and exact["tuned"] >= 0.25, exact
    assert exact["ciLow"] > 0.0  # paired bootstrap: better, not by luck

    rows = report["responses"]["held-out-tasks"]
    first = rows[0]
    assert f"│ {prompt_text(first['prompt'])}" in proc.stderr
    card = (out / "README.md").read_text()
    section = card.split("## Before and after", 1)[1].split("## Lineage", 1)[0]
    assert "| prompt | base model | tuned model | expected |" in section
    assert f"| {answer_text(first['reference'])} |" in section
