"""Continual learning, trained for real: task a, then a conflicting task b, with no
protection, replay, EWC and L2-SP; plus the penalty maths, replay mixing and resume.

Task a and task b map the same words to different codes (assets/continual_tasks.py).
Fine-tuning the a-model on b alone raises a's eval loss by ~1.7 nats/token; replay and
EWC must cut that forgetting by at least 70% and L2-SP by 30%, while b's eval loss stays
under a stated bound and its gain above 85% of the unprotected run's. Measured on this
machine: forgetting none 1.735, replay 0.298, ewc 0.285, l2sp 0.625; b's eval loss
0.023, 0.111, 0.215, 0.178.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from kubetune_trainer.assets.continual_tasks import corpus, write_tasks
from kubetune_trainer.continual.data import choose_rows, even_shares, replay_count
from kubetune_trainer.continual.penalty import (
    STATE_FILE,
    Anchor,
    estimate_fisher,
    quadratic_penalty,
)
from kubetune_trainer.errors import PreemptedError
from tests.trainer.helpers import (
    manifest,
    read_json,
    run_torchrun,
    run_trainer,
    train_in_process,
    train_log,
    write_config,
)

HYPER = {"globalBatchSize": 16, "microBatchSize": 16, "learningRate": 3e-3, "warmupRatio": 0.0}
STEPS_A, STEPS_B = 160, 60
VARIANTS: dict[str, dict[str, Any]] = {
    "none": {},
    "replay": {"replay": {"ratio": 0.3}},
    # the a-model fits a well (eval loss ~0.05), so its Fisher is small (mean ~1e-7): the
    # strength that makes the penalty bind is large accordingly
    "ewc": {"regularizer": {"type": "ewc", "strength": 3.0e7, "fisherSamples": 48}},
    "l2sp": {"regularizer": {"type": "l2sp", "strength": 1.0}},
}


# ------------------------------------------------------------------------ maths
def test_fisher_is_the_mean_squared_per_row_gradient() -> None:
    """Linear model, squared error: d/dw of (w.x - y)^2/2 is (w.x - y) x, known exactly."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False)
    xs, ys = torch.randn(5, 3), torch.randn(5)
    params = dict(model.named_parameters())
    losses = (0.5 * (model(x).squeeze() - y) ** 2 for x, y in zip(xs, ys, strict=True))
    fisher = estimate_fisher(params, losses, total=5)
    with torch.no_grad():
        residual = (xs @ model.weight.squeeze()) - ys
        expected = ((residual[:, None] * xs) ** 2).mean(0)
    torch.testing.assert_close(fisher["weight"].squeeze(), expected)

    halves: list[dict[str, torch.Tensor]] = []  # two "ranks", summed by reduce
    for part in (slice(0, 2), slice(2, 5)):
        part_losses = (
            0.5 * (model(x).squeeze() - y) ** 2 for x, y in zip(xs[part], ys[part], strict=True)
        )
        halves.append(estimate_fisher(params, part_losses, total=5))
    torch.testing.assert_close(halves[0]["weight"] + halves[1]["weight"], fisher["weight"])


def test_penalty_is_half_lambda_weighted_squared_distance() -> None:
    p = nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    start = {"p": torch.tensor([0.0, 2.0, 1.0])}
    fisher = {"p": torch.tensor([2.0, 5.0, 0.5])}
    ewc = quadratic_penalty({"p": p}, start, 4.0, fisher)
    assert float(ewc.detach()) == pytest.approx(0.5 * 4.0 * (2.0 * 1 + 0 + 0.5 * 4))  # 8
    l2sp = quadratic_penalty({"p": p}, start, 4.0)
    assert float(l2sp.detach()) == pytest.approx(0.5 * 4.0 * (1 + 0 + 4))  # 10
    ewc.backward()  # gradient: lambda F (theta - theta*)
    assert p.grad is not None
    torch.testing.assert_close(p.grad, torch.tensor([8.0, 0.0, 4.0]))


def test_anchor_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    params = {"w": nn.Parameter(torch.randn(4, 2)), "b": nn.Parameter(torch.randn(2))}
    anchor = Anchor.snapshot("ewc", 3.0, params)
    anchor.fisher = {n: torch.rand_like(p) for n, p in params.items()}
    anchor.save(tmp_path)
    assert (tmp_path / STATE_FILE).exists()
    with torch.no_grad():  # training moves the weights; the anchor must not follow
        for p in params.values():
            p.add_(1.0)
    fresh = Anchor.snapshot("ewc", 3.0, params)
    fresh.load(tmp_path, torch.device("cpu"))
    for name in params:
        torch.testing.assert_close(fresh.start[name], anchor.start[name])
        assert fresh.fisher is not None and anchor.fisher is not None
        torch.testing.assert_close(fresh.fisher[name], anchor.fisher[name])
    assert float(fresh.penalty(params)) == pytest.approx(float(anchor.penalty(params)))


# ----------------------------------------------------------------------- replay
@pytest.mark.parametrize(("new", "ratio", "added"), [(100, 0.0, 0), (100, 0.2, 25), (90, 0.5, 90)])
def test_replay_ratio_is_the_share_of_each_epoch(new: int, ratio: float, added: int) -> None:
    assert replay_count(new, ratio) == added
    if added:
        assert added / (new + added) == pytest.approx(ratio, abs=0.01)


def test_replay_rows_are_even_per_task_deterministic_and_without_repeats() -> None:
    assert even_shares(7, 3) == [3, 2, 2]
    picks = choose_rows([10, 4], [5, 6], seed=3)
    assert picks == choose_rows([10, 4], [5, 6], seed=3)
    assert picks != choose_rows([10, 4], [5, 6], seed=4)
    first = [r for t, r in picks if t == 0]
    second = [r for t, r in picks if t == 1]
    assert len(first) == 5 and len(set(first)) == 5  # no repeats while rows are left
    assert len(second) == 6 and sorted(set(second)) == [0, 1, 2, 3]  # 4 rows, then again


# ------------------------------------------------------------- a, then b, for real
@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The tiny model's ops are too small to share out: a second thread only adds
    synchronisation (about 3x the CPU time on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from kubetune_trainer.models.tiny import TinyModelSpec, build_tiny_model

    root = tmp_path_factory.mktemp("continual")
    files = write_tasks(root / "data")
    spec = TinyModelSpec(vocab_size=256, hidden_size=64, intermediate_size=128)
    files["tiny"] = build_tiny_model(root / "tiny", spec, corpus())
    doc = manifest(
        "full",
        files["tiny"],
        files["a_train"],
        "promptCompletion",
        root / "model-a",
        eval_data=files["a_eval"],
        hyper=dict(HYPER, maxSteps=STEPS_A),
    )
    result = train_in_process(doc, root)
    assert result.eval_results["tuned"]["loss"] < 0.1  # task a is learned
    files["model_a"] = root / "model-a"
    return files


def _doc_b(tasks: dict[str, Path], out: Path, variant: str, **hyper: Any) -> dict[str, Any]:
    continual: dict[str, Any] = {
        "protectedTasks": [
            {
                "name": "task-a",
                "train": str(tasks["a_train"]),
                "eval": str(tasks["a_eval"]),
                "format": "promptCompletion",
            }
        ],
        **copy.deepcopy(VARIANTS[variant]),
    }
    return manifest(
        "full",
        tasks["model_a"],
        tasks["b_train"],
        "promptCompletion",
        out,
        eval_data=tasks["b_eval"],
        hyper={**HYPER, "maxSteps": STEPS_B, **hyper},
        continual=continual,
    )


@pytest.fixture(scope="module")
def results(tasks: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variant in VARIANTS:
        root = tmp_path_factory.mktemp(variant)
        train_in_process(_doc_b(tasks, root / "out", variant), root)
        out[variant] = read_json(root / "out" / "eval_results.json")["continual"]
        out[variant]["dir"] = str(root / "out")
    return out


def _forgetting(doc: dict[str, Any]) -> float:
    return float(doc["protectedTasks"][0]["forgetting"])


def test_b_alone_forgets_a(results: dict[str, Any]) -> None:
    none = results["none"]
    assert none["protectedTasks"][0]["lossBefore"] < 0.1
    assert _forgetting(none) > 1.0  # a's eval loss rises by over a nat per token
    assert none["newTask"]["gain"] > 1.5 and none["newTask"]["lossTuned"] < 0.05


@pytest.mark.parametrize(
    ("variant", "cut", "b_loss"),
    [("replay", 0.7, 0.2), ("ewc", 0.7, 0.35), ("l2sp", 0.3, 0.3)],
)
def test_technique_cuts_forgetting_at_a_bounded_cost_to_b(
    results: dict[str, Any], variant: str, cut: float, b_loss: float
) -> None:
    none, doc = results["none"], results[variant]
    assert _forgetting(doc) <= (1.0 - cut) * _forgetting(none), (variant, doc)
    assert doc["newTask"]["lossTuned"] < b_loss  # b is still learned ...
    assert doc["newTask"]["gain"] > 0.85 * none["newTask"]["gain"]  # ... nearly as well


def test_outputs_report_forgetting_and_the_penalty(results: dict[str, Any]) -> None:
    ewc = Path(results["ewc"]["dir"])
    card = (ewc / "README.md").read_text()
    assert "### Continual learning" in card and "task-a (protected, forgetting)" in card
    assert "new task (gain)" in card and "ewc strength 3e+07" in card
    penalties = [r["continual/penalty"] for r in train_log(ewc)]
    assert len(penalties) == STEPS_B and penalties[0] == 0.0 and max(penalties) > 0.0
    assert results["ewc"]["regularizer"]["fisherMean"] > 0.0
    assert "kubetune_trainer_continual_penalty" in (ewc / "metrics.prom").read_text()
    replay = results["replay"]["replay"]
    assert replay["rows"] == round(192 * 0.3 / 0.7)  # 82 of task a's 192 rows
    assert "continual/penalty" not in train_log(Path(results["none"]["dir"]))[0]


def test_resume_keeps_theta_star_and_fisher(
    tasks: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped and resumed, the run ends where the uninterrupted one does: the anchor and
    the Fisher come from the checkpoint, not from the resumed (already trained) weights."""
    hyper = {"maxSteps": 12}
    straight_root, resumed_root = tmp_path / "straight", tmp_path / "resumed"
    straight_root.mkdir()
    resumed_root.mkdir()
    train_in_process(_doc_b(tasks, straight_root / "out", "ewc", **hyper), straight_root)
    doc = _doc_b(tasks, resumed_root / "out", "ewc", **hyper)
    monkeypatch.setenv("KUBETUNE_STOP_AFTER_STEP", "6")
    with pytest.raises(PreemptedError):
        train_in_process(doc, resumed_root)
    ckpt = resumed_root / "out" / "checkpoints" / "step-000000006"
    assert (ckpt / STATE_FILE).exists() and (ckpt / "continual.json").exists()
    monkeypatch.delenv("KUBETUNE_STOP_AFTER_STEP")
    resumed = train_in_process(doc, resumed_root)
    assert resumed.resumed_from == 6
    a = train_log(straight_root / "out")
    b = train_log(resumed_root / "out")
    assert [r["continual/penalty"] for r in b[-6:]] == pytest.approx(
        [r["continual/penalty"] for r in a[-6:]], rel=1e-4, abs=1e-9
    )
    x = read_json(straight_root / "out" / "eval_results.json")["continual"]
    y = read_json(resumed_root / "out" / "eval_results.json")["continual"]
    assert y["protectedTasks"][0]["lossBefore"] == pytest.approx(
        x["protectedTasks"][0]["lossBefore"]
    )
    assert y["protectedTasks"][0]["lossAfter"] == pytest.approx(
        x["protectedTasks"][0]["lossAfter"], rel=1e-4
    )
    assert json.loads((ckpt / "continual.json").read_text())["before"]["task-a"] == pytest.approx(
        x["protectedTasks"][0]["lossBefore"]
    )


def test_two_processes_estimate_the_same_fisher_and_penalty(
    tasks: dict[str, Path], tmp_path: Path
) -> None:
    """DDP: Fisher rows are sharded over the ranks and all-reduced, and the penalty is
    added once per rank and averaged back to itself: 2 processes == 1 process."""
    hyper = {"maxSteps": 6}
    single_root, ddp_root = tmp_path / "single", tmp_path / "ddp"
    single_root.mkdir()
    ddp_root.mkdir()
    train_in_process(_doc_b(tasks, single_root / "out", "ewc", **hyper), single_root)
    doc = _doc_b(tasks, ddp_root / "out", "ewc", microBatchSize=8, **hyper)
    proc = run_torchrun(write_config(doc, ddp_root / "job.json", nproc=2), ddp_root / "out", 2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    one = read_json(single_root / "out" / "eval_results.json")["continual"]
    two = read_json(ddp_root / "out" / "eval_results.json")["continual"]
    assert two["regularizer"]["fisherMean"] == pytest.approx(
        one["regularizer"]["fisherMean"], rel=1e-4
    )
    assert two["regularizer"]["finalPenalty"] > 0.0
    assert two["regularizer"]["finalPenalty"] == pytest.approx(
        one["regularizer"]["finalPenalty"], rel=1e-2
    )
    assert two["protectedTasks"][0]["lossAfter"] == pytest.approx(
        one["protectedTasks"][0]["lossAfter"], rel=1e-3
    )


def test_validate_only_checks_protected_data_and_plans_replay(
    tasks: dict[str, Path], tmp_path: Path
) -> None:
    doc = _doc_b(tasks, tmp_path / "out", "replay")
    proc = run_trainer(
        write_config(doc, tmp_path / "job.json"), tmp_path / "out", "--validate-only"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "continual: protecting task-a (192 train, 48 eval rows); 82 replayed rows" in (
        proc.stdout
    )
    doc["spec"]["continual"]["protectedTasks"][0]["train"] = str(tmp_path / "missing.jsonl")
    proc = run_trainer(
        write_config(doc, tmp_path / "job.json"), tmp_path / "out", "--validate-only"
    )
    assert proc.returncode == 65, proc.stdout[-2000:]  # INVALID_DATA, before any training
