"""``kubetune run examples/pipelines/sft-rm-grpo.yaml --local`` end to end: SFT, a reward
model on the SFT model, GRPO of the SFT policy against that reward model (2 CPU processes)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.trainer.test_cli_run import _env, _kubetune

EXAMPLE = "examples/pipelines/sft-rm-grpo.yaml"


def test_example_pipeline_runs_every_stage_wired_and_a_rerun_skips_them(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    proc = _kubetune("run", EXAMPLE, "--local", "--cache-dir", str(cache), env=_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    root = cache / "pvc" / "checkpoints" / "sft-rm-grpo"
    for stage in ("sft", "rm", "grpo"):
        out = root / stage
        assert (out / "model.safetensors").is_file(), stage
        assert json.loads((out / "progress.json").read_text())["state"] == "done"
        assert (out / "README.md").is_file()
    lineage = {s: json.loads((root / s / "lineage.json").read_text()) for s in ("rm", "grpo")}
    rl = lineage["grpo"]["job"]["resolvedJob"]["spec"]
    assert rl["method"] == "grpo"
    assert rl["rlhf"]["reward"]["model"] == "pvc://checkpoints/sft-rm-grpo/rm"  # the RM stage
    assert rl["model"]["uri"] == "pvc://checkpoints/sft-rm-grpo/sft"
    assert lineage["grpo"]["baseModel"]["uri"] == "pvc://checkpoints/sft-rm-grpo/sft"
    assert lineage["rm"]["job"]["resolvedJob"]["spec"]["model"]["uri"] == rl["model"]["uri"]
    assert "wrote sample dataset" in proc.stderr and "sample-prompts" in proc.stderr
    # the final model card walks back through every stage
    upstream = lineage["grpo"]["upstream"]
    assert upstream["model"]["job"]["method"] == "full"
    assert upstream["rewardModel"]["job"]["method"] == "reward"
    assert upstream["rewardModel"]["upstream"]["model"]["job"]["method"] == "full"
    card = (root / "grpo" / "README.md").read_text()
    assert "- started from:" in card and "- reward model:" in card
    assert proc.stderr.count("trained") >= 3 and "pipeline sft-rm-grpo succeeded" in proc.stderr

    # a re-run finds every output complete and trains nothing
    written = (root / "grpo" / "model.safetensors").stat().st_mtime_ns
    again = _kubetune("run", EXAMPLE, "--local", "--cache-dir", str(cache), env=_env(tmp_path))
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stderr.count("skipped (complete)") == 3
    assert (root / "grpo" / "model.safetensors").stat().st_mtime_ns == written
