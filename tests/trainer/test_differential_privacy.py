"""spec.differentialPrivacy: the accountant, per-row clipping, noise, and the budget.

The accountant is checked against the closed form of the (unsubsampled) Gaussian
mechanism's Rényi DP and against Opacus stepped one step at a time; clipping is checked
on a model whose per-row gradients are known; training runs end to end on the tiny
model, and a job whose steps would exceed its budget is refused by validation and
stopped, with a checkpoint and a permanent exit code, by training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from kubetune.api.differential_privacy import DifferentialPrivacySpec
from kubetune.contract import ExitCode
from kubetune_trainer.checkpoint import atomic
from kubetune_trainer.dp.budget import epsilon_spent, noise_for_budget, plan_privacy
from kubetune_trainer.dp.dpsgd import (
    clipped_row_gradients,
    dp_sgd_gradients,
    poisson_sample,
)
from kubetune_trainer.errors import InvalidConfigError
from tests.trainer.helpers import (
    manifest,
    read_json,
    run_trainer,
    train_in_process,
    train_log,
    write_config,
)

# ------------------------------------------------------------------ the accountant


def _gaussian_rdp_epsilon(sigma: float, steps: int, delta: float) -> float:
    """Reference: T compositions of the Gaussian mechanism (sampling rate 1) have RDP
    T * alpha / (2 sigma^2) at order alpha (Mironov 2017, Prop. 7); converted to
    (epsilon, delta) with Balle et al. 2020, Thm. 21, minimised over Opacus' orders."""
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    best = math.inf
    for a in orders:
        rdp = steps * a / (2 * sigma**2)
        eps = rdp - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a)
        best = min(best, eps)
    return best


@pytest.mark.parametrize(("sigma", "steps"), [(1.0, 1), (2.0, 10), (5.0, 100)])
def test_epsilon_of_the_full_batch_gaussian_mechanism_matches_the_closed_form(
    sigma: float, steps: int
) -> None:
    assert epsilon_spent(sigma, 1.0, steps, 1e-5) == pytest.approx(
        _gaussian_rdp_epsilon(sigma, steps, 1e-5), rel=1e-9
    )


def test_epsilon_of_subsampled_steps_matches_opacus_stepped_one_by_one() -> None:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for _ in range(500):
        acc.step(noise_multiplier=1.1, sample_rate=256 / 60000)
    assert epsilon_spent(1.1, 256 / 60000, 500, 1e-5) == pytest.approx(
        acc.get_epsilon(1e-5), rel=1e-9
    )
    # subsampling amplifies privacy: far less than the full-batch mechanism
    assert epsilon_spent(1.1, 256 / 60000, 500, 1e-5) < _gaussian_rdp_epsilon(1.1, 500, 1e-5) / 10


def test_computed_noise_spends_at_most_the_target_and_not_much_less() -> None:
    sigma = noise_for_budget(8.0, 0.1, 200, 1e-5)
    assert 7.9 <= epsilon_spent(sigma, 0.1, 200, 1e-5) <= 8.0
    assert epsilon_spent(sigma * 0.9, 0.1, 200, 1e-5) > 8.0
    prv = noise_for_budget(8.0, 0.1, 200, 1e-5, "prv")
    assert epsilon_spent(prv, 0.1, 200, 1e-5, "prv") <= 8.0
    assert prv <= sigma * 1.05  # PRV is at least as tight as RDP (up to its tolerance)


def test_plan_defaults_delta_below_one_over_n_and_refuses_a_plan_over_budget() -> None:
    plan = plan_privacy(DifferentialPrivacySpec(target_epsilon=4.0), 48, 16, 30, strict=True)
    assert plan.delta == pytest.approx(1e-5) and plan.sample_rate == pytest.approx(1 / 3)
    many = plan_privacy(DifferentialPrivacySpec(target_epsilon=4.0), 10**6, 1000, 3, strict=True)
    assert many.delta == pytest.approx(1e-7)  # min(1e-5, 1 / (10 N))
    assert plan.noise_computed and plan.epsilon(30) <= 4.0
    assert plan.epsilon(30) < plan.epsilon(31)  # epsilon grows with every step
    tight = DifferentialPrivacySpec(target_epsilon=1.0, noise_multiplier=0.5)
    with pytest.raises(InvalidConfigError, match=r"over targetEpsilon 1; only \d+ steps fit"):
        plan_privacy(tight, 48, 16, 30, strict=True)
    loose = plan_privacy(tight, 48, 16, 30, strict=False)  # training: stops at the budget
    assert (
        loose.epsilon(loose.affordable_steps()) <= 1.0 < loose.epsilon(loose.affordable_steps() + 1)
    )
    with pytest.raises(InvalidConfigError, match="below 1/N"):
        plan_privacy(
            DifferentialPrivacySpec(target_epsilon=1.0, delta=0.01), 200, 16, 3, strict=True
        )


def test_poisson_sampling_is_seeded_by_step_and_has_the_rate() -> None:
    draws = [poisson_sample(1000, 0.1, seed=7, step=s) for s in range(50)]
    assert draws[3] == poisson_sample(1000, 0.1, seed=7, step=3)  # resumes draw the same
    assert draws[3] != draws[4]
    sizes = [len(d) for d in draws]
    assert 90 <= sum(sizes) / len(sizes) <= 110 and len(set(sizes)) > 5  # sizes vary


# ------------------------------------------------------------------ per-row clipping


@dataclass
class _Rows:
    x: torch.Tensor
    y: torch.Tensor
    real_tokens: int = 1


class _Squared:
    """A stand-in method: summed squared error, one target per row."""

    def loss(self, forward: Any, model: nn.Module, batch: _Rows) -> Any:
        out = model(batch.x)
        return type("Out", (), {"loss_sum": ((out - batch.y) ** 2).sum()})()

    def count(self, batch: _Rows) -> float:
        return float(batch.y.shape[0])


def _rows(n: int, outlier: float | None = None) -> list[Any]:
    gen = torch.Generator().manual_seed(0)
    rows: list[Any] = [
        _Rows(torch.randn(1, 8, generator=gen), torch.randn(1, 1, generator=gen)) for _ in range(n)
    ]
    if outlier is not None:
        rows.append(_Rows(torch.randn(1, 8, generator=gen) * 10, torch.full((1, 1), outlier)))
    return rows


def _flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads])


def test_each_rows_clipped_contribution_is_at_most_the_clip_norm() -> None:
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    params = list(model.parameters())
    c = 0.5
    normal = _rows(7)
    rows = _rows(7, outlier=1e4)  # the same 7 rows and one with a huge loss
    method: Any = _Squared()
    base, _, _, _ = clipped_row_gradients(params, model, model, method, normal, c)
    summed, norms, _, _ = clipped_row_gradients(params, model, model, method, rows, c)
    assert norms[-1] > 1e4 * c  # the outlier's raw gradient is enormous ...
    influence = (_flat(summed) - _flat(base)).norm()
    assert influence <= c * (1 + 1e-5)  # ... its clipped contribution is at most C
    for row in rows:
        alone, _, _, _ = clipped_row_gradients(params, model, model, method, [row], c)
        assert _flat(alone).norm() <= c * (1 + 1e-5)
    # without clipping the outlier dominates the sum
    raw, _, _, _ = clipped_row_gradients(params, model, model, method, rows, 1e12)
    assert (_flat(raw) - _flat(base)).norm() > 1e3 * _flat(base).norm()


def test_noise_is_drawn_once_per_step_with_std_sigma_c_over_expected_batch() -> None:
    model = nn.Linear(200, 100, bias=False)
    plan = plan_privacy(
        DifferentialPrivacySpec(target_epsilon=50.0, noise_multiplier=2.0, max_grad_norm=0.5),
        1000,
        10,
        5,
        strict=False,
    )
    method: Any = _Squared()
    step = dp_sgd_gradients(list(model.parameters()), model, model, method, [], plan)
    assert step.samples == 0
    grad = model.weight.grad
    assert grad is not None
    assert float(grad.std()) == pytest.approx(2.0 * 0.5 / 10, rel=0.05)


# ------------------------------------------------------------------ training end to end


def _doc(tiny_model: Path, data_dir: Path, out: Path, dp: dict[str, Any], **hyper: Any) -> Any:
    hp = {"maxSteps": 15, "globalBatchSize": 16, "learningRate": 5e-3, **hyper}
    return manifest(
        "lora",
        tiny_model,
        data_dir / "chat.jsonl",
        "chat",
        out,
        hyper=hp,
        peft={"lora": {"r": 8}},
        differentialPrivacy=dp,
    )


def test_dp_lora_trains_within_budget_and_reports_it(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = train_in_process(_doc(tiny_model, data_dir, out, {"targetEpsilon": 8.0}), tmp_path)
    assert result.steps == 15
    log = train_log(out)
    losses = [r["loss"] for r in log]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05  # loss falls despite the noise
    spent = [r["dp/epsilon"] for r in log]
    assert spent == sorted(spent) and 7.0 < spent[-1] <= 8.0
    assert all(0.0 <= r["dp/clipped_fraction"] <= 1.0 for r in log)
    lineage = read_json(out / "lineage.json")["differentialPrivacy"]
    assert lineage["epsilonSpent"] == pytest.approx(spent[-1])
    assert lineage["targetEpsilon"] == 8.0 and lineage["noiseMultiplierComputed"] is True
    assert lineage["delta"] == pytest.approx(1e-5) and lineage["maxGradNorm"] == 1.0
    card = (out / "README.md").read_text()
    assert "## Differential privacy" in card and "noise multiplier" in card
    assert f"{spent[-1]:.4g}" in card
    assert "kubetune_trainer_dp_epsilon " in (out / "metrics.prom").read_text()
    assert read_json(out / "progress.json")["dpEpsilon"] == pytest.approx(spent[-1])


def test_validation_refuses_and_training_stops_before_exceeding_the_budget(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    dp = {"targetEpsilon": 2.0, "noiseMultiplier": 3.0}
    doc = _doc(tiny_model, data_dir, out, dp, maxSteps=20)
    config = write_config(doc, tmp_path / "job.json")
    check = run_trainer(config, out, "--validate-only")
    assert check.returncode == ExitCode.INVALID_CONFIG, check.stderr[-2000:]
    assert "would spend epsilon" in check.stderr + check.stdout

    plan = plan_privacy(DifferentialPrivacySpec.model_validate(dp), 48, 16, 20, strict=False)
    fit = plan.affordable_steps()
    assert 5 < fit < 20  # 13
    proc = run_trainer(config, out)
    assert proc.returncode == ExitCode.INVALID_CONFIG, proc.stderr[-2000:]
    termination = (tmp_path / "out.termination-log").read_text()
    assert (
        "privacy budget reached at step" in termination and "PrivacyBudgetExhausted" in termination
    )
    log = train_log(out)
    assert len(log) == fit and log[-1]["dp/epsilon"] <= 2.0
    assert (out / "checkpoints" / atomic.checkpoint_name(fit) / atomic.COMPLETE).exists()
    assert read_json(out / "progress.json")["state"] == "failed"


def test_validation_passes_a_plan_within_budget(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    doc = _doc(tiny_model, data_dir, out, {"targetEpsilon": 2.0, "noiseMultiplier": 4.0})
    proc = run_trainer(write_config(doc, tmp_path / "job.json"), out, "--validate-only")
    assert proc.returncode == ExitCode.SUCCESS, proc.stderr[-2000:]
    assert "differential privacy: 15 steps" in proc.stdout
