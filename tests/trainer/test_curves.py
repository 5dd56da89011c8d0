"""Training curves: the run's picture in its outputs and model card, across a resume."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest

from kubetune.contract.display import number
from kubetune_trainer import curves
from kubetune_trainer.curves import CHECKPOINT_FILE, CURVES_JSON, CURVES_PNG, CurveRecorder, Series
from kubetune_trainer.errors import NumericalDivergenceError, PreemptedError
from tests.trainer.helpers import manifest, read_json, train_in_process, train_log

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _doc(tiny_model: Path, data_dir: Path, out: Path, steps: int, **extra: object) -> dict:
    return manifest(
        "lora",
        tiny_model,
        data_dir / "chat.jsonl",
        "chat",
        out,
        eval_data=data_dir / "chat_eval.jsonl",
        hyper={"maxSteps": steps, "learningRate": 5e-3, "warmupRatio": 0.25},
        peft={"lora": {"r": 2}},
        **extra,
    )


def test_series_stay_bounded_evenly_spread_and_end_at_the_last_step() -> None:
    series = Series(max_points=50)
    for step in range(1, 10_001):
        series.add(step, float(step))
    steps, values = series.points()
    assert len(steps) <= 50 and len(steps) == len(values)
    assert steps[0] == 1 and steps[-1] == 10_000 and values[-1] == 10_000.0
    assert steps == sorted(set(steps))
    gaps = {b - a for a, b in pairwise(steps[:-1])}
    assert len(gaps) == 1  # evenly spread (the last point may sit closer)
    assert series.recorded == 10_000


def test_recorder_checkpoint_round_trip_keeps_points_up_to_the_resume(tmp_path: Path) -> None:
    rec = CurveRecorder(max_points=16)
    rec.record_eval(0, 3.0, "base")
    for step in range(1, 41):
        rec.record_step(step, loss=4.0 - step / 20, learning_rate=1e-3, tokens_per_second=100.0)
    rec.record_step(41, loss=float("nan"), learning_rate=1e-3, tokens_per_second=100.0)
    rec.save(tmp_path)
    resumed = CurveRecorder(max_points=16)
    assert resumed.load(tmp_path, step=41)
    assert resumed.to_dict()["series"] == rec.to_dict()["series"]
    assert resumed.restarts == [41] and resumed.best_loss == (40, 2.0)
    json.loads(json.dumps(resumed.document(), allow_nan=False))  # NaN is stored as null
    # an unreadable checkpoint file is ignored: the run goes on with fresh curves
    (tmp_path / CHECKPOINT_FILE).write_text("{not json")
    fresh = CurveRecorder()
    assert not fresh.load(tmp_path, step=41) and fresh.restarts == [41]


def test_a_run_leaves_its_curves_in_outputs_and_model_card(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    from matplotlib.image import imread

    out = tmp_path / "out"
    result = train_in_process(_doc(tiny_model, data_dir, out, steps=6), tmp_path)
    assert result.steps == 6

    png = (out / CURVES_PNG).read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 30_000
    height, width, _ = imread(out / CURVES_PNG).shape
    assert (width, height) == (1100, 750)

    doc = read_json(out / CURVES_JSON)
    logged = train_log(out)
    for name in ("loss", "learning_rate", "tokens_per_second"):
        assert doc["series"][name]["steps"] == [1, 2, 3, 4, 5, 6], name
    assert doc["series"]["loss"]["values"] == pytest.approx([r["loss"] for r in logged])
    assert doc["series"]["learning_rate"]["values"] == pytest.approx(
        [r["learningRate"] for r in logged]
    )
    assert [(e["step"], e["model"]) for e in doc["evals"]] == [(0, "base"), (6, "tuned")]
    tuned = read_json(out / "eval_results.json")["tuned"]["loss"]
    assert doc["summary"]["finalEvalLoss"] == pytest.approx(tuned)

    card = (out / "README.md").read_text()
    assert "![Training curves](training_curves.png)" in card
    assert f"| final training loss | {number(logged[-1]['loss'])} (step 6) |" in card
    assert read_json(out / "lineage.json")["curves"]["image"] == CURVES_PNG
    assert not list(out.glob(".*.tmp-*"))  # written atomically: no temp file left


def test_a_resumed_run_keeps_the_points_before_the_restart(
    tiny_model: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    doc = _doc(tiny_model, data_dir, out, steps=6, checkpoint={"intervalSteps": 2})
    monkeypatch.setenv("KUBETUNE_STOP_AFTER_STEP", "3")
    with pytest.raises(PreemptedError):
        train_in_process(doc, tmp_path)
    first = train_log(out)
    assert [r["step"] for r in first] == [1, 2, 3]
    assert not (out / CURVES_PNG).exists()  # a preempted run draws nothing yet
    monkeypatch.delenv("KUBETUNE_STOP_AFTER_STEP")
    assert train_in_process(doc, tmp_path).resumed_from == 3

    curves_doc = read_json(out / CURVES_JSON)
    loss = curves_doc["series"]["loss"]
    assert loss["steps"] == [1, 2, 3, 4, 5, 6]
    assert loss["values"][:3] == pytest.approx([r["loss"] for r in first])
    assert curves_doc["restarts"] == [3]
    assert [e["model"] for e in curves_doc["evals"]] == ["base", "tuned"]  # base kept
    assert "| resumed from checkpoints at steps | 3 |" in (out / "README.md").read_text()


def test_a_plotting_failure_does_not_fail_the_run(
    tiny_model: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> bytes:
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(curves, "render_png", broken)
    out = tmp_path / "out"
    result = train_in_process(_doc(tiny_model, data_dir, out, steps=2), tmp_path)
    assert result.steps == 2
    assert (out / "adapter_model.safetensors").exists()
    assert not (out / CURVES_PNG).exists()
    assert read_json(out / CURVES_JSON)["series"]["loss"]["steps"] == [1, 2]
    card = (out / "README.md").read_text()
    assert "could not be drawn" in card and "![Training curves]" not in card


def test_a_diverged_run_leaves_its_curves(
    tiny_model: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune_trainer.health import HealthMonitor

    check = HealthMonitor.check

    def diverge_at_step_3(self: HealthMonitor, step: int, *args: object, **kw: object) -> str:
        if step == 3:
            raise NumericalDivergenceError("gradient norm 1e9 at step 3 (forced by the test)")
        return check(self, step, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(HealthMonitor, "check", diverge_at_step_3)
    out = tmp_path / "out"
    doc = _doc(tiny_model, data_dir, out, steps=6)
    doc["spec"]["dataset"].pop("eval")
    doc["spec"]["dataset"]["evalSplit"] = 0.0
    with pytest.raises(NumericalDivergenceError):
        train_in_process(doc, tmp_path)
    assert read_json(out / CURVES_JSON)["series"]["loss"]["steps"] == [1, 2]
    assert (out / CURVES_PNG).read_bytes().startswith(PNG_SIGNATURE)


def test_metrics_off_switch_turns_off_progress_and_curves(
    tiny_model: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBETUNE_METRICS", "off")
    out = tmp_path / "out"
    result = train_in_process(_doc(tiny_model, data_dir, out, steps=2), tmp_path)
    assert result.steps == 2 and len(train_log(out)) == 2
    assert not (out / "progress.json").exists()
    assert not (out / CURVES_JSON).exists() and not (out / CURVES_PNG).exists()
    assert (out / "metrics.prom").read_bytes() == b""
    assert "No training curves were recorded." in (out / "README.md").read_text()
