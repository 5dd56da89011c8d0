"""`kubetune run PIPELINE --local` planning: outputs under the pvc root, wiring, what counts
as a finished stage, and the sample prompts (no training here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kubetune.cli.main import app
from kubetune.cli.pipeline_run import (
    is_complete,
    load_pipeline,
    local_dir,
    plan_local,
)
from kubetune.contract import ExitCode

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "pipelines" / "sft-rm-grpo.yaml"


def test_plan_maps_outputs_under_the_pvc_root_and_wires_inputs(tmp_path: Path) -> None:
    stages = plan_local(load_pipeline(EXAMPLE), tmp_path)
    assert [(s.name, s.job.spec.method) for s in stages] == [
        ("sft", "full"),
        ("rm", "reward"),
        ("grpo", "grpo"),
    ]
    assert [s.output_dir for s in stages] == [
        tmp_path / "checkpoints/sft-rm-grpo" / name for name in ("sft", "rm", "grpo")
    ]
    grpo = stages[2]
    assert grpo.inputs == {"model": "sft", "rewardModel": "rm"}
    assert grpo.job.metadata.name == "sft-rm-grpo-grpo"
    assert grpo.job.spec.model.uri == stages[0].output_uri
    assert grpo.job.spec.rlhf.reward.model == stages[1].output_uri
    # the trainer maps the wired pvc:// input to the very directory the upstream wrote
    assert local_dir(grpo.job.spec.rlhf.reward.model, tmp_path) == stages[1].output_dir


def test_local_dir_refuses_object_stores(tmp_path: Path) -> None:
    assert local_dir("/outputs/x", tmp_path) == Path("/outputs/x")
    with pytest.raises(ValueError, match="only pvc:// and file"):
        local_dir("s3://bucket/x", tmp_path)


def test_a_stage_is_complete_only_with_lineage_card_and_done_progress(tmp_path: Path) -> None:
    assert not is_complete(tmp_path)
    (tmp_path / "lineage.json").write_text("{}")
    assert not is_complete(tmp_path)  # no model card yet: the trainer writes it last
    (tmp_path / "README.md").write_text("card")
    assert is_complete(tmp_path)  # a stage trained elsewhere (no local progress document)
    (tmp_path / "progress.json").write_text(json.dumps({"state": "training"}))
    assert not is_complete(tmp_path)
    (tmp_path / "progress.json").write_text(json.dumps({"state": "done"}))
    assert is_complete(tmp_path)


def test_sample_prompts_are_seeded_once_at_the_known_path(tmp_path: Path) -> None:
    uri = "pvc://datasets/sample-prompts/train.jsonl"
    from kubetune_trainer.assets.fixtures import seed_location

    assert seed_location(uri, tmp_path) is not None
    rows = [json.loads(x) for x in (tmp_path / "datasets/sample-prompts/train.jsonl").open()]
    assert len(rows) == 200 and set(rows[0]) == {"prompt", "answer"}
    assert rows == [json.loads(x) for x in (REPO / "examples/data/prompts-train.jsonl").open()]
    assert seed_location(uri, tmp_path) is None  # already there
    assert seed_location("pvc://datasets/mine/train.jsonl", tmp_path) is None  # never invented


def test_validate_only_prints_the_wiring_without_training(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["run", str(EXAMPLE), "--local", "--validate-only", "--cache-dir", str(tmp_path)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "grpo: grpo (model <- sft, rewardModel <- rm) -> pvc://checkpoints/sft-rm-grpo/grpo" in (
        result.output
    )
    assert "pipeline sft-rm-grpo is valid" in result.output
    assert not (tmp_path / "pvc").exists()


def test_an_invalid_pipeline_exits_with_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        EXAMPLE.read_text().replace(
            "model: sft\n      spec:\n        method: reward",
            "model: grpo\n      spec:\n        method: reward",
        )
    )
    result = CliRunner().invoke(app, ["run", str(bad), "--local"], env={"COLUMNS": "200"})
    assert result.exit_code == ExitCode.INVALID_CONFIG
    assert (
        "spec.stages[1].inputs.model: stage 'rm' takes model from 'grpo', which is not an "
        "earlier stage" in result.output
    )
