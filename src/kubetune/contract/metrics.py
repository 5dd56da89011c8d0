"""The metrics contract: every Prometheus metric the trainer and the operator export.

This is the one list. ``TrainerMetrics`` and ``OperatorMetrics`` build their collectors
from it (name, help, labels and buckets come from here, so the code cannot drift from the
list), ``docs/metrics.md`` is generated from it, and alert rules and dashboards are
written against it. A unit test holds it to the Prometheus naming rules: base units
(``_seconds``, ``_bytes``, ``_ratio`` for 0-1), ``_total`` on counters, and bounded labels
only (never a pod, step, rank, attempt, IP or UID).

Names are the names *as exposed*: counters carry their ``_total`` suffix and info metrics
their ``_info`` suffix (``prometheus_client`` adds both; :attr:`MetricSpec.collector_name`
is the name to hand it). Histograms are named by their base name (the exposition adds
``_bucket``, ``_sum`` and ``_count``).

Labels that Prometheus adds at scrape time (relabeling; our code never sets them) are
listed in :data:`SCRAPE_LABELS`. This module must stay importable without
``prometheus_client``: it is part of the light shared base.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

MetricType = Literal["counter", "gauge", "histogram", "info"]
Component = Literal["trainer", "operator"]
#: Units as Prometheus understands them; "" for a dimensionless number (a loss, a count).
Unit = Literal["seconds", "bytes", "ratio", ""]

#: Scrape job names (the Prometheus ``job`` label of each component's targets).
TRAINER_SCRAPE_JOB: Final = "kubetune-trainer"
OPERATOR_SCRAPE_JOB: Final = "kubetune-operator"

#: Labels the scrape configuration attaches (relabeling), with what they hold.
SCRAPE_LABELS: Final[dict[str, str]] = {
    "job": f"The scrape job: `{OPERATOR_SCRAPE_JOB}` or `{TRAINER_SCRAPE_JOB}`.",
    "namespace": (
        "The namespace of the scraped pod (the FineTuneJob's namespace for trainer series); "
        '`"local"` for `kubetune run --local`. Operator series that carry their own '
        "`namespace` label (the job's) need `honor_labels: true` on the operator's scrape."
    ),
    "finetunejob": (
        "Trainer series only: the FineTuneJob's name, from the pod label `kubetune.io/job` "
        "(the job name for `kubetune run --local`)."
    ),
}

#: Labels that would make a series per pod, step or attempt: unbounded cardinality.
FORBIDDEN_LABELS: Final[frozenset[str]] = frozenset(
    {"pod", "pod_name", "step", "rank", "attempt", "ip", "pod_ip", "uid", "node", "instance"}
)


@dataclass(frozen=True)
class Label:
    """A label our code sets, and the (small, fixed) set of values it takes."""

    name: str
    meaning: str


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric."""

    name: str
    type: MetricType
    unit: Unit
    help: str
    component: Component
    labels: tuple[Label, ...] = ()
    buckets: tuple[float, ...] | None = None

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)

    @property
    def collector_name(self) -> str:
        """The name to give ``prometheus_client`` (it appends ``_info`` to info metrics
        itself; ``_total`` it accepts either way)."""
        if self.type == "info":
            return self.name.removesuffix("_info")
        return self.name

    @property
    def family_name(self) -> str:
        """The metric family name a Prometheus text-format parser reports (counters lose
        ``_total``; the 0.0.4 format has no info type, so an info metric is a gauge family
        named with its ``_info``)."""
        if self.type == "counter":
            return self.name.removesuffix("_total")
        return self.name


# -- shared buckets ----------------------------------------------------------------------------
#: Optimizer steps and checkpoint writes: 50 ms to 10 min.
STEP_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
RECONCILE_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
API_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: Creation to running: includes queueing (Kueue) and image pulls, up to hours.
TIME_TO_RUNNING_BUCKETS: Final = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
#: Gang created to all pods running: placement, image pulls, container start.
SCHEDULING_BUCKETS: Final = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: Gang running to first step: model download/load, data preparation, base evaluation.
FIRST_STEP_BUCKETS: Final = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)


def _t(
    name: str,
    type_: MetricType,
    unit: Unit,
    help_: str,
    *labels: Label,
    buckets: tuple[float, ...] | None = None,
) -> MetricSpec:
    return MetricSpec(name, type_, unit, help_, "trainer", labels, buckets)


def _o(
    name: str,
    type_: MetricType,
    unit: Unit,
    help_: str,
    *labels: Label,
    buckets: tuple[float, ...] | None = None,
) -> MetricSpec:
    return MetricSpec(name, type_, unit, help_, "operator", labels, buckets)


_SPLIT = Label("split", "Dataset split: `train` or `eval`.")
_NAMESPACE = Label("namespace", "The FineTuneJob's namespace.")
_FINETUNEJOB = Label("finetunejob", "The FineTuneJob's name (the series vanishes with the job).")
_MOE_LAYER = Label("layer", "The decoder layer of the MoE block (`0` to the model's depth).")
_QUEUE = Label(
    "queue", 'The job\'s Kueue queue (label `kueue.x-k8s.io/queue-name`); `""` without one.'
)

# -- the trainer (rank 0 serves /metrics) ------------------------------------------------------
TRAINER_METRICS: Final[tuple[MetricSpec, ...]] = (
    _t(
        "kubetune_trainer_job_info",
        "info",
        "",
        "Method, base model and distributed strategy of this trainer (always 1).",
        Label("method", "The fine-tuning method (`full`, `lora`, `dpo`, ...)."),
        Label("base_model", "The base model's URI (one value per job)."),
        Label("strategy", "The distributed strategy (`ddp`, `fsdp`, `deepspeed`, ...)."),
    ),
    _t("kubetune_trainer_loss", "gauge", "", "Training loss of the last optimizer step."),
    _t(
        "kubetune_trainer_eval_loss",
        "gauge",
        "",
        "Loss on the evaluation set.",
        Label("model", "`base` (before training) or `tuned` (after)."),
    ),
    _t("kubetune_trainer_learning_rate", "gauge", "", "Learning rate of the last step."),
    _t("kubetune_trainer_grad_norm", "gauge", "", "Global gradient norm before clipping."),
    _t(
        "kubetune_trainer_tokens_per_second",
        "gauge",
        "",
        "Non-padding tokens per second of the last step (all ranks).",
    ),
    _t(
        "kubetune_trainer_samples_per_second",
        "gauge",
        "",
        "Samples per second of the last step (all ranks).",
    ),
    _t(
        "kubetune_trainer_step_duration_seconds",
        "histogram",
        "seconds",
        "Wall time of one optimizer step (data, forward, backward, update).",
        buckets=STEP_BUCKETS,
    ),
    _t(
        "kubetune_trainer_data_wait_seconds_total",
        "counter",
        "seconds",
        "Time the training loop spent waiting for its next batches (collation and transfer "
        "to the device); rate() over step time shows an input-bound job.",
    ),
    _t(
        "kubetune_trainer_checkpoint_duration_seconds",
        "histogram",
        "seconds",
        "Time to write one checkpoint (all ranks, until committed).",
        buckets=STEP_BUCKETS,
    ),
    _t(
        "kubetune_trainer_memory_bytes",
        "gauge",
        "bytes",
        "Memory of rank 0's process.",
        Label(
            "kind",
            "`rss` (resident now), `peak_rss` (resident peak), `cuda_allocated` (tensors on "
            "the GPU now; CUDA only).",
        ),
    ),
    _t(
        "kubetune_trainer_accelerator_memory_peak_bytes",
        "gauge",
        "bytes",
        "Peak accelerator memory allocated by rank 0 (torch.cuda.max_memory_allocated); "
        "absent on CPU.",
    ),
    _t(
        "kubetune_trainer_model_flops_utilization_ratio",
        "gauge",
        "ratio",
        "Model FLOPs utilisation (0-1): 6 x parameters x tokens/s per GPU over the GPU's "
        "dense bf16 peak; absent where the peak is unknown (CPU, unlisted GPUs).",
    ),
    _t("kubetune_trainer_steps_total", "counter", "", "Optimizer steps done by this process."),
    _t(
        "kubetune_trainer_tokens_total",
        "counter",
        "",
        "Non-padding tokens processed (all ranks).",
    ),
    _t("kubetune_trainer_samples_total", "counter", "", "Samples processed (all ranks)."),
    _t(
        "kubetune_trainer_skipped_steps_total",
        "counter",
        "",
        "Optimizer updates skipped for a tolerated non-finite (NaN/inf) loss.",
    ),
    _t(
        "kubetune_trainer_skipped_rows_total",
        "counter",
        "",
        "Invalid dataset rows skipped (dataset.skipInvalidRows).",
        _SPLIT,
    ),
    _t(
        "kubetune_trainer_truncated_rows_total",
        "counter",
        "",
        "Dataset rows truncated to dataset.maxSeqLength.",
        _SPLIT,
    ),
    _t("kubetune_trainer_step", "gauge", "", "Current optimizer step (resumes count on)."),
    _t("kubetune_trainer_total_steps", "gauge", "", "Planned optimizer steps."),
    _t("kubetune_trainer_epoch", "gauge", "", "Fractional epoch."),
    _t(
        "kubetune_trainer_eta_seconds",
        "gauge",
        "seconds",
        "Estimated time to the end of training (recent step times x steps left).",
    ),
    _t(
        "kubetune_trainer_last_checkpoint_step",
        "gauge",
        "",
        "Step of the newest complete checkpoint written by this process.",
    ),
    _t("kubetune_trainer_checkpoints_total", "counter", "", "Checkpoints written."),
    _t("kubetune_trainer_world_size", "gauge", "", "Processes in the gang."),
    _t("kubetune_trainer_parameters", "gauge", "", "All parameters of the model."),
    _t(
        "kubetune_trainer_trainable_parameters",
        "gauge",
        "",
        "Parameters being trained (the adapter's for PEFT methods).",
    ),
    *(
        _t(f"kubetune_trainer_rl_{field.replace('/', '_')}", "gauge", "", f"{help_} (`{field}`).")
        for field, help_ in (
            ("objective/kl", "Online RL: mean KL of a response to the reference, nats"),
            ("objective/entropy", "Online RL: mean per-token policy entropy, nats"),
            ("objective/kl_coef", "Online RL: KL coefficient in use (adaptive or fixed)"),
            ("policy/clipfrac", "Online RL: share of tokens where PPO-clip bound"),
            ("policy/approxkl", "Online RL: approximate KL of the update to the sampler"),
            ("critic/vf_explained_var", "PPO: variance of returns explained by the critic"),
            ("response_length/mean", "Online RL: mean response length, tokens"),
            ("reward/mean", "Online RL: mean reward of the step's responses"),
            ("reward/std", "Online RL: standard deviation of those rewards"),
            ("generation/tokens_per_second", "Online RL: generated tokens per second"),
            ("generation/time_share", "Online RL: share of step time spent generating"),
        )
    ),
    _t(
        "kubetune_trainer_rl_guard_warnings_total",
        "counter",
        "",
        "Reward-hacking guard warnings (length drift, reward/held-out divergence).",
        Label("guard", "`length_drift` or `reward_divergence`."),
    ),
    _t(
        "kubetune_trainer_continual_penalty",
        "gauge",
        "",
        "Continual learning: the EWC/L2-SP penalty of the last step, in loss units "
        "(spec.continual.regularizer; absent without one).",
    ),
    # -- differential privacy (spec.differentialPrivacy; absent without it) ---------------
    _t(
        "kubetune_trainer_dp_epsilon",
        "gauge",
        "",
        "Differential privacy: the epsilon spent so far (at the job's delta, by its "
        "accountant) after the last optimizer step; training stops before it would exceed "
        "kubetune_trainer_dp_target_epsilon.",
    ),
    _t(
        "kubetune_trainer_dp_target_epsilon",
        "gauge",
        "",
        "Differential privacy: the job's privacy budget (spec.differentialPrivacy.targetEpsilon).",
    ),
    # -- mixture of experts (absent for dense models); per optimizer step, all ranks --------
    _t(
        "kubetune_trainer_moe_expert_token_ratio",
        "gauge",
        "ratio",
        "MoE: share of the top-k routing assignments each expert received in the last "
        "step, averaged over the MoE layers (sums to 1 over experts; 1/E is balanced).",
        Label("expert", "The expert's index in its layer (`0` to E-1; E is fixed per model)."),
    ),
    _t(
        "kubetune_trainer_moe_max_expert_token_ratio",
        "gauge",
        "ratio",
        "MoE: the busiest expert's share of a layer's routing assignments in the last step "
        "(1/E is balanced; 1/top_k, the most one expert can take, is routing collapse).",
        _MOE_LAYER,
    ),
    _t(
        "kubetune_trainer_moe_routing_entropy_nats",
        "gauge",
        "",
        "MoE: mean entropy of a layer's router distribution over experts in the last step, "
        "in nats (0: one expert takes everything; ln E: uniform).",
        _MOE_LAYER,
    ),
    _t(
        "kubetune_trainer_moe_aux_loss",
        "gauge",
        "",
        "MoE: load-balancing auxiliary loss of the last step, before its coefficient "
        "(transformers' Switch-Transformer loss: top_k when balanced, larger when not).",
    ),
)


def rl_metric_name(field: str) -> str:
    """The gauge of an online-RL field as the field names it (``objective/kl``)."""
    return f"kubetune_trainer_rl_{field.replace('/', '_')}"


# -- the operator (leader and standbys serve /metrics; only the leader's job series move) -----
OPERATOR_METRICS: Final[tuple[MetricSpec, ...]] = (
    _o(
        "kubetune_jobs",
        "gauge",
        "",
        "FineTuneJobs known to this operator, by namespace and phase (counted at scrape "
        "time from its cache; every phase is listed, zeros included).",
        _NAMESPACE,
        Label("phase", "The job's phase (`Pending`, `Queued`, `Running`, `Succeeded`, ...)."),
    ),
    _o(
        "kubetune_job_transitions_total",
        "counter",
        "",
        "Phase transitions of FineTuneJobs, by the phase entered.",
        Label("phase", "The phase entered."),
    ),
    _o(
        "kubetune_job_restarts_total",
        "counter",
        "",
        "Gang restarts (after a retryable failure or a restart request), by reason.",
        _NAMESPACE,
        Label("reason", "Why the gang restarted (`NodeLost`, `RestartRequested`, ...)."),
    ),
    _o(
        "kubetune_job_failures_total",
        "counter",
        "",
        "FineTuneJobs that failed, by reason.",
        Label("reason", "Why the job failed (`InvalidData`, `BackoffLimitExceeded`, ...)."),
    ),
    _o(
        "kubetune_job_time_to_running_seconds",
        "histogram",
        "seconds",
        "Time from FineTuneJob creation to its first gang running (first attempt only).",
        buckets=TIME_TO_RUNNING_BUCKETS,
    ),
    _o(
        "kubetune_job_scheduling_latency_seconds",
        "histogram",
        "seconds",
        "Time from an attempt's gang being created to all of its pods running (every attempt).",
        buckets=SCHEDULING_BUCKETS,
    ),
    _o(
        "kubetune_job_time_to_first_step_seconds",
        "histogram",
        "seconds",
        "Time from an attempt's gang running to the operator seeing its first optimizer "
        "step (past the checkpoint it resumed from).",
        buckets=FIRST_STEP_BUCKETS,
    ),
    _o(
        "kubetune_reconcile_duration_seconds",
        "histogram",
        "seconds",
        "Time to reconcile one FineTuneJob (decide + API calls).",
        buckets=RECONCILE_BUCKETS,
    ),
    _o(
        "kubetune_reconcile_errors_total",
        "counter",
        "",
        "Reconciles that failed and were re-queued with backoff (API errors, conflicts).",
    ),
    _o(
        "kubetune_gpu_allocated_seconds_total",
        "counter",
        "seconds",
        "GPU-seconds held by running gangs (GPUs x seconds), by namespace and queue.",
        _NAMESPACE,
        _QUEUE,
    ),
    _o(
        "kubetune_gpu_productive_seconds_total",
        "counter",
        "seconds",
        "GPU-seconds spent on steps that were kept (not redone after a restart), by "
        "namespace and queue.",
        _NAMESPACE,
        _QUEUE,
    ),
    _o(
        "kubetune_job_gpu_allocated_seconds",
        "gauge",
        "seconds",
        "GPU-seconds a FineTuneJob's gangs have held so far (all attempts).",
        _NAMESPACE,
        _FINETUNEJOB,
    ),
    _o(
        "kubetune_job_gpu_productive_seconds",
        "gauge",
        "seconds",
        "GPU-seconds of a FineTuneJob's kept steps so far; productive/allocated is goodput.",
        _NAMESPACE,
        _FINETUNEJOB,
    ),
    _o(
        "kubetune_job_gpu_budget_seconds",
        "gauge",
        "seconds",
        "A FineTuneJob's GPU-time budget (only jobs that set one).",
        _NAMESPACE,
        _FINETUNEJOB,
    ),
    _o(
        "kubetune_job_attempts",
        "gauge",
        "",
        "Gang attempts of a FineTuneJob so far (status.attempts: 1 + its restarts); a "
        "per-job restart count that exists from the first attempt, so increases show at once.",
        _NAMESPACE,
        _FINETUNEJOB,
    ),
    _o(
        "kubetune_operator_leader",
        "gauge",
        "",
        "1 while this replica holds the leader lease (or runs standalone), else 0.",
    ),
    _o("kubetune_operator_queue_depth", "gauge", "", "FineTuneJobs waiting to be reconciled."),
    _o(
        "kubetune_progress_scrape_failures_total",
        "counter",
        "",
        "Failed reads of rank 0's progress document, by reason: the job's progress is "
        "unknown, not stalled.",
        Label("reason", "`unreachable`, `http`, `redirect`, `too_large` or `invalid` (the body)."),
    ),
    _o(
        "kubetune_status_write_failures_total",
        "counter",
        "",
        "FineTuneJob status writes the API server refused, by HTTP status code.",
        Label("code", "The HTTP status code (`409`, `422`, ...)."),
    ),
    _o(
        "kubetune_operator_api_requests_total",
        "counter",
        "",
        "Requests the operator's own client sent to the API server.",
        Label("verb", "`get`, `list`, `create`, `patch`, `delete`, ..."),
        Label("resource", "The resource kind (`pods`, `finetunejobs`, `leases`, ...)."),
        Label("code", "The HTTP status code of the answer."),
    ),
    _o(
        "kubetune_operator_api_request_duration_seconds",
        "histogram",
        "seconds",
        "Latency of the operator's own API requests.",
        Label("verb", "`get`, `list`, `create`, `patch`, `delete`, ..."),
        buckets=API_BUCKETS,
    ),
)

_ROLLOUT_NAMESPACE = Label("namespace", "The ModelRollout's namespace.")
_MODELROLLOUT = Label(
    "modelrollout", "The ModelRollout's name (the series vanishes with the rollout)."
)

#: The ModelRollout controller's metrics (served by the operator, registered only where the
#: ModelRollout API is served; operator/kubetune_operator/rollout/metrics.py). Every series
#: is per rollout: the cardinality stays bounded because rollouts are few (one per canary in
#: flight), each has at most 16 analysis metrics, and a deleted rollout's series are removed.
ROLLOUT_METRICS: Final[tuple[MetricSpec, ...]] = (
    _o(
        "kubetune_rollout_candidate_weight",
        "gauge",
        "",
        "Percent of the route's traffic the rollout last set for its candidate (0-100).",
        _ROLLOUT_NAMESPACE,
        _MODELROLLOUT,
    ),
    _o(
        "kubetune_rollout_phase",
        "gauge",
        "",
        "1 for the rollout's current phase, 0 for every other phase (one series per phase).",
        _ROLLOUT_NAMESPACE,
        _MODELROLLOUT,
        Label("phase", "`Pending`, `Progressing`, `Paused`, `Promoted`, `RolledBack`, `Failed`."),
    ),
    _o(
        "kubetune_rollout_paused",
        "gauge",
        "",
        "1 for the reason the rollout is Paused (status.pauseReason), 0 for the other reason; "
        "every series is 0 while the rollout is not Paused.",
        _ROLLOUT_NAMESPACE,
        _MODELROLLOUT,
        Label(
            "reason",
            "`PauseStep` (a pause step waits) or `AnalysisInconclusive` (an analysis step "
            "ran out of intervals without deciding).",
        ),
    ),
    _o(
        "kubetune_rollout_measurements_total",
        "counter",
        "",
        "Analysis measurements of a rollout, by metric and verdict; every metric x verdict "
        "starts at 0 when the controller first sees the metric in the rollout's spec "
        "(bounded: at most 16 metrics x 4 verdicts per rollout).",
        _ROLLOUT_NAMESPACE,
        _MODELROLLOUT,
        Label("metric", "The analysis metric's name (spec.analysis.metrics[].name)."),
        Label("verdict", "`Successful`, `Failed`, `Inconclusive` or `Error`."),
    ),
    _o(
        "kubetune_rollout_aborts_total",
        "counter",
        "",
        "Rollbacks of a rollout, by reason (every reason starts at 0 on the rollout's first "
        "reconcile).",
        _ROLLOUT_NAMESPACE,
        _MODELROLLOUT,
        Label(
            "reason",
            "`MetricFailed`, `SequentialTestWorse`, `QueryErrors`, `ProgressDeadlineExceeded` "
            "or `AbortedByUser`.",
        ),
    ),
    _o(
        "kubetune_rollout_promotions_total",
        "counter",
        "",
        "Promotions of a rollout's candidate to 100 % of the traffic (starts at 0 on the "
        "rollout's first reconcile).",
        _ROLLOUT_NAMESPACE,
        _MODELROLLOUT,
    ),
)

ALL_METRICS: Final[tuple[MetricSpec, ...]] = TRAINER_METRICS + OPERATOR_METRICS + ROLLOUT_METRICS
_BY_NAME: Final[dict[str, MetricSpec]] = {m.name: m for m in ALL_METRICS}


def metric(name: str) -> MetricSpec:
    """The contract entry of ``name`` (as exposed); KeyError for a metric not in the list."""
    return _BY_NAME[name]


#: Name parts that mean a unit other than the base one (seconds, bytes, ratio 0-1).
_NON_BASE_UNITS: Final = (
    "_milliseconds",
    "_ms",
    "_minutes",
    "_hours",
    "_percent",
    "_kilobytes",
    "_megabytes",
    "_gigabytes",
    "_kb",
    "_mb",
    "_gb",
)


def naming_problems(spec: MetricSpec) -> list[str]:
    """What is wrong with ``spec`` by the Prometheus naming rules (empty when nothing)."""
    problems: list[str] = []
    name = spec.name
    if not name.startswith("kubetune_"):
        problems.append("not under the kubetune_ namespace")
    if spec.component == "trainer" and not name.startswith("kubetune_trainer_"):
        problems.append("a trainer metric outside kubetune_trainer_")
    stem = name.removesuffix("_total")
    if spec.type == "counter" and not name.endswith("_total"):
        problems.append("a counter must end in _total")
    if spec.type != "counter" and name.endswith("_total"):
        problems.append("only counters end in _total")
    if spec.type == "info" and not name.endswith("_info"):
        problems.append("an info metric must end in _info")
    suffix = {"seconds": "_seconds", "bytes": "_bytes", "ratio": "_ratio"}
    if spec.unit and not stem.endswith(suffix[spec.unit]):
        problems.append(f"unit {spec.unit} but the name does not end in {suffix[spec.unit]}")
    for unit, ending in suffix.items():
        if stem.endswith(ending) and spec.unit != unit:
            problems.append(f"named {ending} but its unit is {spec.unit or 'none'}")
    for ending in _NON_BASE_UNITS:
        if stem.endswith(ending) or f"{ending}_" in stem:
            problems.append(f"{ending}: not a base unit")
    if spec.type == "histogram":
        if not spec.buckets or list(spec.buckets) != sorted(set(spec.buckets)):
            problems.append("a histogram needs strictly increasing buckets")
    elif spec.buckets is not None:
        problems.append("buckets on a metric that is not a histogram")
    names = spec.label_names
    if len(set(names)) != len(names):
        problems.append("a label listed twice")
    for label in spec.labels:
        if label.name in FORBIDDEN_LABELS:
            problems.append(f"label {label.name}: unbounded cardinality")
        if not label.meaning.strip():
            problems.append(f"label {label.name} has no meaning")
        if spec.component == "trainer" and label.name in SCRAPE_LABELS:
            problems.append(f"label {label.name} clashes with the scrape-time label")
        if label.name in ("job", "instance", "le", "quantile"):
            problems.append(f"label {label.name} is reserved by Prometheus")
    if not spec.help.strip():
        problems.append("no help text")
    return problems
