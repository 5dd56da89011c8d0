"""The metrics contract: the one list is well named, and the two registries export exactly
what it lists (checked on a real exposition parsed by prometheus_client's parser)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kubetune.contract.metrics import (
    ALL_METRICS,
    OPERATOR_METRICS,
    TRAINER_METRICS,
    Label,
    MetricSpec,
    metric,
    naming_problems,
)
from kubetune.contract.metrics_doc import METRICS_DOC, render_metrics_doc
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.plan import MetricEvent
from kubetune_trainer.metrics import TrainerMetrics

REPO = Path(__file__).resolve().parents[3]

#: The names every helper of issue 11 codes against (alerts, dashboards, goodput).
AGREED = {
    "kubetune_trainer_loss",
    "kubetune_trainer_eval_loss",
    "kubetune_trainer_learning_rate",
    "kubetune_trainer_grad_norm",
    "kubetune_trainer_tokens_per_second",
    "kubetune_trainer_samples_per_second",
    "kubetune_trainer_step_duration_seconds",
    "kubetune_trainer_data_wait_seconds_total",
    "kubetune_trainer_checkpoint_duration_seconds",
    "kubetune_trainer_memory_bytes",
    "kubetune_trainer_accelerator_memory_peak_bytes",
    "kubetune_trainer_model_flops_utilization_ratio",
    "kubetune_trainer_steps_total",
    "kubetune_trainer_tokens_total",
    "kubetune_trainer_samples_total",
    "kubetune_trainer_skipped_steps_total",
    "kubetune_trainer_step",
    "kubetune_trainer_total_steps",
    "kubetune_trainer_eta_seconds",
    "kubetune_trainer_last_checkpoint_step",
    "kubetune_trainer_checkpoints_total",
    "kubetune_trainer_epoch",
    "kubetune_trainer_world_size",
    "kubetune_trainer_job_info",
    "kubetune_jobs",
    "kubetune_job_transitions_total",
    "kubetune_job_restarts_total",
    "kubetune_job_failures_total",
    "kubetune_job_scheduling_latency_seconds",
    "kubetune_job_time_to_first_step_seconds",
    "kubetune_reconcile_duration_seconds",
    "kubetune_reconcile_errors_total",
    "kubetune_gpu_allocated_seconds_total",
    "kubetune_gpu_productive_seconds_total",
    "kubetune_job_gpu_allocated_seconds",
    "kubetune_job_gpu_productive_seconds",
    "kubetune_job_gpu_budget_seconds",
    "kubetune_operator_leader",
    "kubetune_operator_queue_depth",
    "kubetune_progress_scrape_failures_total",
    "kubetune_status_write_failures_total",
    "kubetune_operator_api_requests_total",
    "kubetune_operator_api_request_duration_seconds",
}


# -- the list itself ---------------------------------------------------------------------------
def test_the_agreed_names_are_all_in_the_contract() -> None:
    assert AGREED - {m.name for m in ALL_METRICS} == set()


def test_labels_agreed_for_the_operators_job_series() -> None:
    assert metric("kubetune_jobs").label_names == ("namespace", "phase")
    assert metric("kubetune_job_restarts_total").label_names == ("namespace", "reason")
    for name in ("kubetune_gpu_allocated_seconds_total", "kubetune_gpu_productive_seconds_total"):
        assert metric(name).label_names == ("namespace", "queue")
    for kind in ("allocated", "productive", "budget"):
        assert metric(f"kubetune_job_gpu_{kind}_seconds").label_names == (
            "namespace",
            "finetunejob",
        )


def test_names_are_unique() -> None:
    names = [m.name for m in ALL_METRICS]
    assert len(names) == len(set(names))
    assert {m.component for m in TRAINER_METRICS} == {"trainer"}
    assert {m.component for m in OPERATOR_METRICS} == {"operator"}


@pytest.mark.parametrize("spec", ALL_METRICS, ids=lambda m: m.name)
def test_every_metric_follows_the_naming_rules(spec: MetricSpec) -> None:
    assert naming_problems(spec) == []


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (MetricSpec("kubetune_x", "counter", "", "h", "operator"), "_total"),
        (MetricSpec("kubetune_x_total", "gauge", "", "h", "operator"), "only counters"),
        (MetricSpec("kubetune_x_ms", "gauge", "", "h", "operator"), "base unit"),
        (MetricSpec("kubetune_x_seconds", "gauge", "", "h", "operator"), "unit is none"),
        (MetricSpec("kubetune_x", "gauge", "bytes", "h", "operator"), "_bytes"),
        (MetricSpec("kubetune_x_percent", "gauge", "", "h", "operator"), "base unit"),
        (MetricSpec("kubetune_x_ratio", "gauge", "", "h", "operator"), "unit is none"),
        (MetricSpec("kubetune_x_seconds", "histogram", "seconds", "h", "operator"), "buckets"),
        (
            MetricSpec("kubetune_x", "gauge", "", "h", "operator", (Label("pod", "p"),)),
            "cardinality",
        ),
        (
            MetricSpec("kubetune_x", "gauge", "", "h", "operator", (Label("step", "s"),)),
            "cardinality",
        ),
        (MetricSpec("kubetune_x", "gauge", "", "h", "operator", (Label("ip", ""),)), "meaning"),
        (
            MetricSpec("kubetune_trainer_x", "gauge", "", "h", "trainer", (Label("job", "j"),)),
            "scrape-time",
        ),
        (MetricSpec("kubetune_y", "gauge", "", "h", "trainer"), "kubetune_trainer_"),
    ],
)
def test_the_rules_catch_bad_names(spec: MetricSpec, problem: str) -> None:
    assert any(problem in p for p in naming_problems(spec)), naming_problems(spec)


def test_contract_imports_without_prometheus_client() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "import kubetune.contract.metrics, kubetune.contract.metrics_doc\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the registries against the list -----------------------------------------------------------
def _exposed(text: str) -> dict[str, tuple[str, set[str], set[str]]]:
    """{family name: (type, sample names, label names)} of an exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        labels = {k for s in family.samples for k in s.labels if k != "le"}
        out[family.name] = (family.type, {s.name for s in family.samples}, labels)
    return out


def _check(registry: Any, specs: tuple[MetricSpec, ...]) -> None:
    exposed = _exposed(generate_latest(registry).decode())
    by_family = {s.family_name: s for s in specs}
    assert set(exposed) - set(by_family) == set(), "exported but not in the contract"
    assert set(by_family) - set(exposed) == set(), "in the contract but not exported"
    for family, (kind, samples, labels) in exposed.items():
        spec = by_family[family]
        assert kind == ("gauge" if spec.type == "info" else spec.type), spec.name
        assert labels == set(spec.label_names), spec.name
        if spec.type == "histogram":
            assert f"{spec.name}_bucket" in samples and f"{spec.name}_count" in samples
        else:
            assert samples == {spec.name}, spec.name


def test_operator_registry_is_the_contract() -> None:
    m = OperatorMetrics()
    m.watch_jobs(lambda: [("ns", "Running")])
    m.record(
        [
            MetricEvent("transition", "Running"),
            MetricEvent("restart", "NodeLost"),
            MetricEvent("failure", "InvalidData"),
            MetricEvent("time_to_running", value=3.0),
            MetricEvent("scheduling_latency", value=2.0),
            MetricEvent("time_to_first_step", value=40.0),
        ],
        namespace="ns",
    )
    m.reconcile_duration.observe(0.01)
    m.reconcile_errors.inc()
    m.record_gpu_time("ns", "q", "job", 10.0, 5.0, 100.0)
    m.record_gpu_time("ns", "q", "job", 20.0, 9.0, 100.0)
    m.record_attempts("ns", "job", 2)
    m.count_request("get", "pods", 200, 0.01)
    m.leader.set(1)
    m.queue_depth.set(0)
    m.progress_scrape_failures.labels(reason="http").inc()
    m.status_write_failures.labels(code="409").inc()
    _check(m.registry, OPERATOR_METRICS)


def test_trainer_registry_is_the_contract() -> None:
    m = TrainerMetrics()
    m.set_info({"method": "lora", "base_model": "file:///m", "strategy": "ddp"})
    with pytest.raises(ValueError, match="job info"):
        m.set_info({"job": "j", "method": "lora"})
    for gauge in (m.loss, m.learning_rate, m.grad_norm, m.tokens_per_second, m.samples_per_second):
        gauge.set(1.0)
    m.eval_loss.labels(model="base").set(2.0)
    m.step_duration.observe(0.5)
    m.data_wait.inc(0.1)
    m.checkpoint_duration.observe(1.0)
    m.record_memory("cpu")
    m.accelerator_memory_peak.set(2**30)  # what CUDA would report
    m.mfu.set(0.4)
    m.steps.inc()
    m.tokens.inc(100)
    m.samples.inc(4)
    m.skipped_steps.inc()
    m.skipped_rows.labels(split="train").inc(0)
    m.truncated_rows.labels(split="train").inc(0)
    m.checkpoints.inc()
    fields = ["objective/kl", "objective/entropy", "objective/kl_coef", "policy/clipfrac"]
    fields += ["policy/approxkl", "critic/vf_explained_var", "response_length/mean"]
    fields += ["reward/mean", "reward/std", "generation/tokens_per_second"]
    m.record_rl({field: 1.0 for field in [*fields, "generation/time_share", "not/exported"]})
    m.guard_warnings.labels(guard="length_drift").inc()
    m.continual_penalty.set(0.5)  # spec.continual.regularizer
    m.dp_epsilon.set(1.5)  # spec.differentialPrivacy
    m.dp_target_epsilon.set(8.0)
    # mixture of experts (kubetune_trainer.moe.report)
    from kubetune_trainer.moe.report import record_metrics
    from kubetune_trainer.moe.routing import RoutingStats

    record_metrics(m, RoutingStats([0, 1], [[0.5, 0.5], [0.25, 0.75]], [0.6, 0.5], 2.1))
    _check(m.registry, TRAINER_METRICS)


def test_online_rl_gauges_are_absent_for_other_methods() -> None:
    m = TrainerMetrics()
    m.loss.set(1.0)
    assert "kubetune_trainer_rl_objective_kl" not in generate_latest(m.registry).decode()
    m.record_rl({"objective/kl": 2.5})
    assert "kubetune_trainer_rl_objective_kl 2.5" in generate_latest(m.registry).decode()


def test_trainer_leaves_out_what_it_cannot_compute() -> None:
    """On a CPU there is no accelerator peak and no MFU: absent, never a fake 0."""
    m = TrainerMetrics()
    m.record_memory("cpu")
    m.record_mfu(1000.0)  # no known peak: nothing
    text = generate_latest(m.registry).decode()
    assert "kubetune_trainer_accelerator_memory_peak_bytes" not in text
    assert "kubetune_trainer_model_flops_utilization_ratio" not in text


# -- the generated page ------------------------------------------------------------------------
def test_metrics_doc_lists_every_metric_and_is_current() -> None:
    text = render_metrics_doc()
    for spec in ALL_METRICS:
        assert f"| `{spec.name}` | {spec.type} |" in text
    assert "`finetunejob`" in text and "`namespace`" in text
    assert (REPO / METRICS_DOC).read_text() == text, "run `kubetune docs metrics`"


def test_docs_command_writes_and_checks_the_page(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kubetune.cli.main import app

    page = tmp_path / "metrics.md"
    runner = CliRunner()
    check = ["docs", "metrics", "--check", "--output", str(page)]
    assert runner.invoke(app, check).exit_code == 1, "missing: stale"
    assert runner.invoke(app, ["docs", "metrics", "--output", str(page)]).exit_code == 0
    assert page.read_text() == render_metrics_doc()
    assert runner.invoke(app, check).exit_code == 0
    page.write_text(page.read_text().replace("kubetune_trainer_loss", "kubetune_trainer_lost"))
    assert runner.invoke(app, check).exit_code == 1
