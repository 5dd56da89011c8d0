"""Every dashboard panel and every rule the chart ships, asked of a real Prometheus that
watched real training (issue 11, "Tests (real parts)").

One scenario, so the data is made once (the expensive part) and judged many ways:

* the real Prometheus (1s scrapes and rule evaluations) loads the chart's rules files as
  they are (charts/kubetune/files/rules/*.yaml, read now, never copied);
* the operator on the dev cluster runs a real 2-pod LoRA job on the node agent's real pods
  (tests/e2e/real_pods), with a GPU-hour budget, and one pod is deleted after a checkpoint
  so the gang restarts (restart, scheduling and time-to-first-step series); an admission
  policy refuses its first progress writes (status-write-failure series); a second job the
  operator's policy forbids fails at once (failure series). Prometheus scrapes the
  operator's metrics port and finds rank 0 of each gang through the kubeconfig;
* meanwhile ``kubetune run --local`` trains a few steps, registered through file_sd.

Then every target of every panel of every dashboard (the per-job one for both runs) is a
range query over the run: none may error, each returns finite data unless NO_DATA_EXPECTED
names it with a reason. Every alert and recording rule expression is an instant and a range
query without error, every rule is healthy, the recording rules recorded the job, and no
alert fired. The per-job dashboard of the cluster job becomes a preview PNG, a test artifact
(``$KUBETUNE_TEST_ARTIFACTS``, default build/test-artifacts/) with the raw results beside it.

Needs what the real-pod tier needs (root, bubblewrap...) and torch; skipped without them,
failing instead with CI=true (the real_cluster fixture and the Prometheus build decide).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from kubetune.devcluster.prometheus import LOCAL_NAMESPACE, OPERATOR_JOB, TRAINER_JOB
from kubetune.devcluster.testing import Cluster, wait_until
from tests.e2e import operator_helpers as helpers
from tests.e2e.real_pods.conftest import RealCluster, real_cluster  # noqa: F401  (fixture)
from tests.e2e.real_pods.jobs import apply_claims, lora_manifest, print_pod_logs, write_tiny_inputs
from tests.observability.dashboard_preview import render_preview
from tests.observability.panel_checks import (
    TargetResult,
    evaluate_dashboard,
    load_dashboard,
    panel_units,
    preview_panels,
    rule_expressions,
    unhealthy_rules,
)
from tests.observability.prometheus_helpers import Prometheus, PromQLError

pytest.importorskip("torch")

# The real-pod tier's own operator (its settings for real pods), not a copy of it.
from tests.e2e.real_pods.test_real_training import real_operator  # noqa: F401  (fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.trainer, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "charts" / "kubetune" / "files" / "dashboards"
RULES_DIR = REPO / "charts" / "kubetune" / "files" / "rules"
ARTIFACTS = Path(os.environ.get("KUBETUNE_TEST_ARTIFACTS") or REPO / "build" / "test-artifacts")

JOB = "obs-lora"
FORBIDDEN_JOB = "obs-forbidden"
#: Steps of the cluster job: enough that a pod can be deleted after the step-5 checkpoint
#: while the gang still trains, so attempt 2 resumes from it.
MAX_STEPS = 120  # long enough that the resumed gang is sampled stepping (goodput)
CHECKPOINT_STEPS = 5
#: 2 GPUs for a few minutes spend well under 1% of this: the budget series exist, and the
#: nearly-spent alert stays silent.
GPU_HOUR_BUDGET = 20.0
LOCAL_JOB = "local-lora-sft"  # examples/local/lora-sft.yaml
LOCAL_STEPS = 10
QUERY_STEP = 1.0  # seconds; the scrape and evaluation interval

#: (dashboard uid, scope, panel title) -> why that panel has no data after this run. "*"
#: matches every scope. Each entry is asserted to be still empty, so the list cannot rot.
NO_DATA_EXPECTED: dict[tuple[str, str, str], str] = {
    ("kubetune-job", "*", "Model FLOPs utilisation"): (
        "exported only on CUDA devices with a known peak FLOP/s; these trainers run on CPU"
    ),
    ("kubetune-job", "*", "Accelerator memory peak"): (
        "exported only on CUDA devices (torch.cuda.max_memory_allocated); CPU trainers here"
    ),
    ("kubetune-job", "local", "Goodput"): (
        "GPU time is the operator's bookkeeping; kubetune run --local has no operator"
    ),
    ("kubetune-job", "local", "GPU-hours allocated vs productive"): (
        "GPU time is the operator's bookkeeping; kubetune run --local has no operator"
    ),
    ("kubetune-job", "local", "Gang restarts"): (
        "restarts are counted by the operator; kubetune run --local has no operator or gang"
    ),
    **{
        ("kubetune-job", "*", title): (
            "exported only by online RL (PPO, GRPO, RLOO); these runs are LoRA SFT. The "
            "series names are checked against the metric contract in tests/unit/dashboards"
        )
        for title in (
            "Reward",
            "KL to the reference",
            "Response length and entropy",
            "Update health",
            "Generation",
        )
    },
    **{
        ("kubetune-job", "*", title): (
            "exported only for mixture-of-experts bases; these runs tune a dense model. The "
            "series names are checked against the metric contract in tests/unit/dashboards"
        )
        for title in ("Expert token share", "Busiest expert and routing entropy")
    },
}
#: alert -> why it may fire during this healthy run (none may).
FIRING_JUSTIFIED: dict[str, str] = {}


@dataclasses.dataclass(frozen=True)
class Scope:
    """Which run a dashboard's variables point at."""

    name: str
    namespace: str
    finetunejob: str


def _local_run(prom: Prometheus, workdir: Path, log: IO[str]) -> subprocess.Popen[str]:
    """``kubetune run --local`` of the smallest example, registered in Prometheus' file_sd."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBETUNE_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(COLUMNS="200")
    command = [
        *(sys.executable, "-m", "kubetune.cli.main", "run", "examples/local/lora-sft.yaml"),
        *("--local", "--nproc", "1", "--max-steps", str(LOCAL_STEPS)),
        *("--output-dir", str(workdir / "run"), "--cache-dir", str(workdir / "cache")),
        *("--prometheus-file-sd-dir", str(prom.file_sd_dir)),
    ]
    return subprocess.Popen(
        command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True
    )


#: While a job carries this annotation, the API server refuses (422) status writes that
#: change its progress: :func:`_progress_refused_while_annotated`.
REFUSE_PROGRESS = "e2e.kubetune.io/refuse-progress"


@contextlib.contextmanager
def _progress_refused_while_annotated(cluster: Cluster, namespace: str) -> Iterator[None]:
    """A ValidatingAdmissionPolicy (CEL in the API server, no webhook) that refuses with 422
    Invalid the status writes changing ``status.progress`` of a FineTuneJob in ``namespace``
    annotated :data:`REFUSE_PROGRESS`: the operator counts the refusal
    (``kubetune_status_write_failures_total{code="422"}``) and writes the status again
    without the progress, as it does for a progress document the API server rejects."""
    name = f"kubetune-e2e-refuse-progress-{namespace}"
    changes_progress = (
        "has(object.status) && has(object.status.progress) && ("
        "!has(oldObject.status) || !has(oldObject.status.progress) || "
        "object.status.progress != oldObject.status.progress)"
    )
    annotated = (
        f"has(object.metadata.annotations) && '{REFUSE_PROGRESS}' in object.metadata.annotations"
    )
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["kubetune.io"],
                        "apiVersions": ["*"],
                        "operations": ["UPDATE"],
                        "resources": ["finetunejobs/status"],
                    }
                ]
            },
            "validations": [
                {
                    "expression": f"!({annotated} && {changes_progress})",
                    "reason": "Invalid",
                    "message": "progress refused while the job is annotated " + REFUSE_PROGRESS,
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            },
        },
    }
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [policy, binding]}),
    )
    try:
        yield
    finally:
        cluster.kubectl(
            "delete",
            f"validatingadmissionpolicybinding/{name}",
            f"validatingadmissionpolicy/{name}",
            "--ignore-not-found",
            check=False,
        )


def _status_writes_refused(operator: helpers.OperatorProcess) -> bool:
    return 'kubetune_status_write_failures_total{code="422"}' in operator.metrics()


def _run_cluster_job_with_one_restart(
    real: RealCluster, operator: helpers.OperatorProcess, namespace: str
) -> dict[str, Any]:
    """The real-pod tier's LoRA job with a budget: its first progress refused by the API
    server, then checkpoint, lose a pod, resume, succeed. Plus a job that fails at once."""
    cluster = real.cluster
    write_tiny_inputs(real)
    apply_claims(real, namespace, ("models", "data", "ckpt"))
    job = lora_manifest(JOB, namespace, max_steps=MAX_STEPS, checkpoint_steps=CHECKPOINT_STEPS)
    job["spec"]["runPolicy"]["gpuHourBudget"] = GPU_HOUR_BUDGET
    job["metadata"]["annotations"] = {REFUSE_PROGRESS: "true"}
    helpers.apply(cluster, job)
    # Fails at once (no pod): the operator's policy allows only the trainer image.
    forbidden = helpers.manifest(FORBIDDEN_JOB, namespace, image="evil.example.com/miner:1")
    helpers.apply(cluster, forbidden)

    # rank 0 reports progress (state "loading") long before its first step
    wait_until(
        lambda: _status_writes_refused(operator),
        timeout=300,
        interval=1,
        what="a refused status write",
    )
    cluster.kubectl("annotate", "finetunejob", JOB, f"{REFUSE_PROGRESS}-", namespace=namespace)
    wait_until(
        lambda: (
            (s := helpers.job_status(cluster, namespace, JOB)).get("lastCheckpoint")
            and (s.get("progress") or {}).get("step", 0) >= CHECKPOINT_STEPS
            and s
        ),
        timeout=300,
        interval=1,
        what="a checkpoint and progress",
    )
    cluster.kubectl("delete", "pod", f"{JOB}-a1-1", "--wait=false", namespace=namespace)
    wait_until(
        lambda: helpers.job_status(cluster, namespace, JOB).get("attempts", 0) >= 2,
        timeout=180,
        interval=1,
        what="attempt 2",
    )
    final = helpers.wait_phase(cluster, namespace, JOB, "Succeeded", timeout=600)
    assert helpers.job_status(cluster, namespace, FORBIDDEN_JOB)["phase"] == "Failed"
    return final


def _matches_allowlist(result: TargetResult) -> str | None:
    for scope in (result.scope, "*"):
        reason = NO_DATA_EXPECTED.get((result.dashboard, scope, result.panel))
        if reason:
            return reason
    return None


def _summary(results: list[TargetResult]) -> str:
    lines = []
    for r in results:
        state = "ERROR" if r.error else ("data" if r.has_data else "EMPTY")
        lines.append(f"{r.dashboard:18} {r.scope:8} {state:5} {r.panel}: {r.expr}")
        if r.error:
            lines.append(f"    {r.error}")
    return "\n".join(lines)


def _check_png(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG, after checking its signature and header chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    assert head[12:16] == b"IHDR", f"{path}: no IHDR chunk"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_every_panel_and_rule_against_real_training(
    real_cluster: RealCluster,  # noqa: F811
    real_operator: helpers.OperatorProcess,  # noqa: F811
    namespace: str,
    start_prometheus: Callable[..., Prometheus],
    tmp_path: Path,
) -> None:
    t0 = time.monotonic()
    started = time.time()
    rule_files = sorted(RULES_DIR.glob("*.yaml"))
    assert rule_files, f"no rules files in {RULES_DIR}"
    prom = start_prometheus(
        operator_targets=[f"127.0.0.1:{real_operator.metrics_port}"],
        kubeconfig=real_cluster.cluster.kubeconfig,
        rule_files=rule_files,
    )

    # -- drive real data: the local run and the cluster job at the same time --------------------
    with (tmp_path / "local-run.log").open("w") as local_log:
        local = _local_run(prom, tmp_path, local_log)
        try:
            with _progress_refused_while_annotated(real_cluster.cluster, namespace):
                _run_cluster_job_with_one_restart(real_cluster, real_operator, namespace)
            local.wait(timeout=300)
        except BaseException:
            print(real_operator.log_tail(80))
            print_pod_logs(real_cluster, namespace)
            raise
        finally:
            if local.poll() is None:
                local.kill()
                local.wait()
    assert local.returncode == 0, (tmp_path / "local-run.log").read_text()[-4000:]
    trained = time.monotonic() - t0
    # Prometheus has seen the verdicts, and ran the rules over them at least once more.
    prom.wait_for(
        f'kubetune_jobs{{job="{OPERATOR_JOB}",namespace="{namespace}",phase="Succeeded"}} == 1',
        timeout=30,
    )
    time.sleep(2 * QUERY_STEP)
    end = time.time()
    window = f"[{int(end - started) + 60}s]"

    # the run produced what the panels are there to show
    job_sel = f'namespace="{namespace}",finetunejob="{JOB}"'
    assert (
        prom.value(
            f'sum(max_over_time(kubetune_job_restarts_total{{namespace="{namespace}"}}{window}))'
        )
        >= 1
    )
    assert prom.value(f"max_over_time(kubetune_job_gpu_budget_seconds{{{job_sel}}}{window})") == (
        GPU_HOUR_BUDGET * 3600
    )
    assert (
        prom.value(f"max(max_over_time(kubetune_trainer_step{{{job_sel}}}{window}))") == MAX_STEPS
    )
    for counter in (
        'kubetune_job_failures_total{reason="ForbiddenByPolicy"}',
        'kubetune_status_write_failures_total{code="422"}',
    ):
        assert prom.value(f"max(max_over_time({counter}{window}))") >= 1, counter
    local_sel = f'namespace="{LOCAL_NAMESPACE}",finetunejob="{LOCAL_JOB}",job="{TRAINER_JOB}"'
    assert (
        prom.value(f"max(max_over_time(kubetune_trainer_step{{{local_sel}}}{window}))")
        == LOCAL_STEPS
    )

    # -- every panel of every dashboard ---------------------------------------------------------
    cluster_job = Scope("cluster", namespace, JOB)
    local_job = Scope("local", LOCAL_NAMESPACE, LOCAL_JOB)
    boards = {p.stem: load_dashboard(p) for p in sorted(DASHBOARDS.glob("*.json"))}
    assert {"kubetune-fleet", "kubetune-job", "kubetune-operator"} <= set(boards)
    # No ModelRollout runs here: test_rollout_dashboard.py evaluates that dashboard against
    # the real rollout metrics.
    scopes = {"kubetune-job": [cluster_job, local_job], "kubetune-rollout": []}
    results: list[TargetResult] = []
    for uid, board in boards.items():
        for scope in scopes.get(uid, [cluster_job]):
            results += evaluate_dashboard(
                prom,
                board,
                scope=scope.name,
                start=started,
                end=end,
                step=QUERY_STEP,
                namespace=scope.namespace,
                finetunejob=scope.finetunejob,
            )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "dashboard-queries.json").write_text(
        json.dumps([dataclasses.asdict(r) for r in results], indent=1)
    )
    print(_summary(results))

    errors = [r for r in results if r.error]
    assert not errors, "queries Prometheus refused or failed:\n" + _summary(errors)
    missing = [r for r in results if not r.has_data and not _matches_allowlist(r)]
    assert not missing, "panels without data:\n" + _summary(missing)
    stale = [r for r in results if r.has_data and _matches_allowlist(r)]
    assert not stale, "allowlisted as empty but has data (shorten NO_DATA_EXPECTED):\n" + _summary(
        stale
    )

    # -- every rule -----------------------------------------------------------------------------
    rules = rule_expressions(rule_files)
    loaded = [r["name"] for g in prom.rules() for r in g["rules"]]
    assert sorted(loaded) == sorted(r.name for r in rules), "Prometheus loaded other rules"
    assert not unhealthy_rules(prom.rules()), unhealthy_rules(prom.rules())
    rule_errors, active = [], []
    for rule in rules:
        try:
            prom.query(rule.expr, end)
            if prom.query_range(rule.expr, started, end, QUERY_STEP) and rule.is_alert:
                active.append(rule.name)
        except PromQLError as exc:
            rule_errors.append(f"{rule.file} {rule.name}: {exc}")
    assert not rule_errors, "\n".join(rule_errors)
    for record in (r.name for r in rules if not r.is_alert):
        recorded = prom.query_range(f"{record}{{{job_sel}}}", started, end, QUERY_STEP)
        assert recorded, f"recording rule {record} recorded nothing for the cluster job"

    alerts = prom.query_range("ALERTS", started, end, QUERY_STEP)
    seen = {(a["metric"]["alertname"], a["metric"]["alertstate"]) for a in alerts}
    print(f"alert expressions true at some point of the run: {sorted(active)}")
    print(f"alert states seen: {sorted(seen)}")
    firing = {name for name, state in seen if state == "firing"} - set(FIRING_JUSTIFIED)
    assert not firing, f"alerts fired during a healthy run: {sorted(firing)}"

    # -- the preview a reviewer looks at --------------------------------------------------------
    job_panels = [r for r in results if r.dashboard == "kubetune-job" and r.scope == "cluster"]
    preview = render_preview(
        preview_panels(job_panels, QUERY_STEP),
        ARTIFACTS / "job-dashboard-preview.png",
        title=f"kubetune-job: {namespace}/{JOB} (real pods, one restart)",
        units=panel_units(boards["kubetune-job"]),
    )
    width, height = _check_png(preview)
    assert width > 800 and height > 600, (width, height)
    print(
        f"preview: {preview} ({width}x{height}); trained in {trained:.0f}s, "
        f"total {time.monotonic() - t0:.0f}s"
    )
