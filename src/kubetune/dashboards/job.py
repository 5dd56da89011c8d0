"""The per-job view: one FineTuneJob's training, throughput, memory and cost.

Selected by the ``namespace`` and ``finetunejob`` variables. Trainer series are
aggregated ``by`` nothing but the job (``max(...)``, ``sum(...)``), so the curves carry on
across gang restarts, when rank 0 comes back as a new pod (a new ``instance``).
"""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dashboard_model

from kubetune.dashboards.common import (
    BYTES,
    COUNT,
    EVENT_WINDOW,
    GOODPUT_THRESHOLDS,
    HOURS,
    RATIO,
    SCIENTIFIC,
    SECONDS,
    PanelBuilder,
    Query,
    histogram_quantiles,
    leader_only,
    new_dashboard,
    query_variable,
    stat,
    timeseries,
    with_sections,
)

UID = "kubetune-job"
FILENAME = "kubetune-job.json"

SEL = 'namespace="$namespace", finetunejob="$finetunejob"'
JOB_ALLOCATED = f"kubetune_job_gpu_allocated_seconds{{{SEL}}}"
JOB_PRODUCTIVE = f"kubetune_job_gpu_productive_seconds{{{SEL}}}"
JOB_BUDGET = f"kubetune_job_gpu_budget_seconds{{{SEL}}}"
JOB_ATTEMPTS = f"kubetune_job_attempts{{{SEL}}}"
#: Series that name a job: the trainer's (scrape-time labels) and the operator's per-job
#: GPU gauges (so a job that has not stepped yet can be picked too).
JOB_METRICS = "kubetune_trainer_step|kubetune_job_gpu_allocated_seconds"
NAMESPACES_QUERY = f'label_values({{__name__=~"{JOB_METRICS}"}}, namespace)'
JOBS_QUERY = f'label_values({{__name__=~"{JOB_METRICS}", namespace="$namespace"}}, finetunejob)'


def _m(metric: str) -> str:
    """``metric`` restricted to the selected job."""
    return f"{metric}{{{SEL}}}"


def _progress() -> list[PanelBuilder]:
    step, total = _m("kubetune_trainer_step"), _m("kubetune_trainer_total_steps")
    return [
        stat(
            "Progress",
            "Optimizer steps done over the steps planned.",
            RATIO,
            [Query(f"max({step}) / max({total})")],
        ),
        stat(
            "Step",
            "Current optimizer step (counts on across resumes).",
            COUNT,
            [Query(f"max({step})")],
        ),
        stat(
            "ETA",
            "The trainer's estimate of the time left, from its recent step rate.",
            SECONDS,
            [Query(f"min({_m('kubetune_trainer_eta_seconds')})")],
        ),
        stat(
            "Epoch",
            "Fractional epoch: passes over the training set so far.",
            COUNT,
            [Query(f"max({_m('kubetune_trainer_epoch')})")],
            decimals=2,
        ),
        stat(
            "World size",
            "Processes in the gang (nnodes x nproc_per_node).",
            COUNT,
            [Query(f"max({_m('kubetune_trainer_world_size')})")],
        ),
        stat(
            "Goodput",
            "GPU-seconds spent on steps that were kept over GPU-seconds allocated, for the "
            "job's whole life (from the operator).",
            RATIO,
            [Query(f"max({leader_only(f'{JOB_PRODUCTIVE} / {JOB_ALLOCATED}')})")],
            thresholds=GOODPUT_THRESHOLDS,
        ),
    ]


def _loss() -> list[PanelBuilder]:
    return [
        timeseries(
            "Training loss",
            "Loss of the last optimizer step (rank 0).",
            COUNT,
            [Query(f"max({_m('kubetune_trainer_loss')})", "loss")],
        ),
        timeseries(
            "Eval loss",
            "Loss on the evaluation set: of the base model (before training) and of the "
            "tuned model (after).",
            COUNT,
            [Query(f"max by (model) ({_m('kubetune_trainer_eval_loss')})", "{{model}}")],
        ),
        timeseries(
            "Learning rate",
            "Learning rate of the optimizer (after warm-up and decay).",
            SCIENTIFIC,
            [Query(f"max({_m('kubetune_trainer_learning_rate')})", "learning rate")],
        ),
        timeseries(
            "Gradient norm",
            "Global gradient norm before clipping; spikes precede divergence.",
            COUNT,
            [Query(f"max({_m('kubetune_trainer_grad_norm')})", "grad norm")],
        ),
    ]


def _online_rl() -> list[PanelBuilder]:
    """PPO, GRPO, RLOO (empty for other methods): what the field watches for reward hacking."""

    def rl(field: str) -> str:
        return f"max({_m('kubetune_trainer_rl_' + field)})"

    guards = _m("kubetune_trainer_rl_guard_warnings_total")
    return [
        timeseries(
            "Reward",
            "Mean and standard deviation of the rewards of the step's responses (reward/mean, "
            "reward/std).",
            COUNT,
            [Query(rl("reward_mean"), "mean"), Query(rl("reward_std"), "std")],
        ),
        timeseries(
            "KL to the reference",
            "Mean KL of a response to the frozen reference (objective/kl, nats) and the KL "
            "coefficient in use (objective/kl_coef). KL climbing while the reward rises is "
            "the policy leaving the reference; the KL ceiling guard stops the run.",
            COUNT,
            [Query(rl("objective_kl"), "KL"), Query(rl("objective_kl_coef"), "coefficient")],
        ),
        timeseries(
            "Response length and entropy",
            "Mean response length in tokens (response_length/mean) and per-token entropy "
            "(objective/entropy). A length drifting away from the first steps' suggests a "
            "reward model with a length bias; entropy collapsing, a policy that stopped "
            "exploring.",
            COUNT,
            [
                Query(rl("response_length_mean"), "length"),
                Query(rl("objective_entropy"), "entropy"),
            ],
        ),
        timeseries(
            "Update health",
            "Share of tokens where PPO's clipped objective bound (policy/clipfrac), approximate "
            "KL of the update to the sampling policy (policy/approxkl) and, for PPO, the "
            "variance of the returns the critic explains (critic/vf_explained_var).",
            COUNT,
            [
                Query(rl("policy_clipfrac"), "clipfrac"),
                Query(rl("policy_approxkl"), "approx KL"),
                Query(rl("critic_vf_explained_var"), "explained variance"),
            ],
        ),
        timeseries(
            "Generation",
            "Share of each RL step spent sampling responses (generation/time_share) and the "
            "generated tokens per second.",
            RATIO,
            [Query(rl("generation_time_share"), "time share")],
        ),
        stat(
            "Guard warnings",
            "Reward-hacking warnings so far (length drift, reward rising while a held-out "
            "reward model's score falls); the reasons are in status.progress.warnings.",
            COUNT,
            [Query(f"sum({guards}) or vector(0)")],
        ),
    ]


def _moe() -> list[PanelBuilder]:
    """Mixture-of-experts bases (empty for dense models): expert load and routing entropy."""
    share = _m("kubetune_trainer_moe_expert_token_ratio")
    busiest = _m("kubetune_trainer_moe_max_expert_token_ratio")
    entropy = _m("kubetune_trainer_moe_routing_entropy_nats")
    return [
        timeseries(
            "Expert token share",
            "Share of the routing assignments each expert received, averaged over the MoE "
            "layers (1/E each when balanced), stacked to 1. One expert taking most of the "
            "tokens is routing collapse.",
            RATIO,
            [
                Query(f"max by (expert) ({share})", "expert {{expert}}"),
            ],
            stacked=True,
        ),
        timeseries(
            "Busiest expert and routing entropy",
            "Per MoE layer: the busiest expert's share (1/top_k at most) and the mean entropy "
            "of the router in nats (ln E = uniform, 0 = always one expert).",
            COUNT,
            [
                Query(f"max by (layer) ({busiest})", "busiest share, layer {{layer}}"),
                Query(f"max by (layer) ({entropy})", "entropy, layer {{layer}}"),
            ],
        ),
    ]


def _throughput() -> list[PanelBuilder]:
    return [
        timeseries(
            "Tokens per second",
            "Training tokens per second, all ranks: as the trainer reports it, and from "
            "its tokens counter.",
            COUNT,
            [
                Query(f"max({_m('kubetune_trainer_tokens_per_second')})", "reported"),
                Query(
                    f"sum(rate({_m('kubetune_trainer_tokens_total')}[$__rate_interval]))",
                    "counter rate",
                ),
            ],
        ),
        timeseries(
            "Samples per second",
            "Training samples per second, all ranks: reported, and from the samples counter.",
            COUNT,
            [
                Query(f"max({_m('kubetune_trainer_samples_per_second')})", "reported"),
                Query(
                    f"sum(rate({_m('kubetune_trainer_samples_total')}[$__rate_interval]))",
                    "counter rate",
                ),
            ],
        ),
        timeseries(
            "Step duration p50/p95",
            "Wall time of one optimizer step (data, forward, backward, update).",
            SECONDS,
            histogram_quantiles(
                "kubetune_trainer_step_duration_seconds", "$__rate_interval", selector=SEL
            ),
        ),
        timeseries(
            "Data-wait share",
            "Share of step time the training loop spent waiting for its next batches "
            "(collation, transfer to the device). High: the input pipeline starves the "
            "accelerators.",
            RATIO,
            [
                Query(
                    f"sum(rate({_m('kubetune_trainer_data_wait_seconds_total')}"
                    "[$__rate_interval])) / "
                    f"sum(rate({_m('kubetune_trainer_step_duration_seconds_sum')}"
                    "[$__rate_interval]))",
                    "data wait",
                )
            ],
            min_value=0,
            max_value=1,
        ),
        timeseries(
            "Model FLOPs utilisation",
            "Achieved model FLOPs over the accelerators' peak (MFU), where the trainer can "
            "compute it (known model and accelerator).",
            RATIO,
            [Query(f"max({_m('kubetune_trainer_model_flops_utilization_ratio')})", "MFU")],
            min_value=0,
        ),
        timeseries(
            "Skipped steps",
            "Optimizer steps skipped because the loss was not finite (NaN/inf), per rate interval.",
            COUNT,
            [
                Query(
                    f"sum(increase({_m('kubetune_trainer_skipped_steps_total')}"
                    "[$__rate_interval]))",
                    "skipped",
                )
            ],
            bars=True,
        ),
    ]


def _memory() -> list[PanelBuilder]:
    return [
        timeseries(
            "Memory by kind",
            "Memory of rank 0's process: rss (resident now), peak_rss (resident peak), "
            "cuda_allocated (tensors on the GPU now; CUDA only).",
            BYTES,
            [Query(f"max by (kind) ({_m('kubetune_trainer_memory_bytes')})", "{{kind}}")],
        ),
        timeseries(
            "Accelerator memory peak",
            "Peak accelerator memory allocated by rank 0 (GPU; absent on CPU runs).",
            BYTES,
            [Query(f"max({_m('kubetune_trainer_accelerator_memory_peak_bytes')})", "peak")],
        ),
    ]


def _checkpoints_and_restarts() -> list[PanelBuilder]:
    return [
        timeseries(
            "Checkpoint duration p50/p95",
            f"Time to write one checkpoint atomically, over a {EVENT_WINDOW} sliding window.",
            SECONDS,
            histogram_quantiles(
                "kubetune_trainer_checkpoint_duration_seconds", EVENT_WINDOW, selector=SEL
            ),
        ),
        timeseries(
            "Step vs last checkpoint",
            "Current step and the step of the newest complete checkpoint: the gap is the "
            "work a restart would redo.",
            COUNT,
            [
                Query(f"max({_m('kubetune_trainer_step')})", "step"),
                Query(f"max({_m('kubetune_trainer_last_checkpoint_step')})", "last checkpoint"),
            ],
        ),
        timeseries(
            "Gang restarts",
            "Gang restarts of this job so far (attempts after the first): each one redoes "
            "the steps since its checkpoint. Restarts by reason are on the fleet dashboard.",
            COUNT,
            [Query(f"max({leader_only(JOB_ATTEMPTS)}) - 1", "restarts")],
        ),
        timeseries(
            "GPU-hours allocated vs productive",
            "GPU-hours the job's gangs held, the part spent on kept steps, and the job's "
            "GPU-hour budget (if it sets one).",
            HOURS,
            [
                Query(f"max({leader_only(JOB_ALLOCATED)}) / 3600", "allocated"),
                Query(f"max({leader_only(JOB_PRODUCTIVE)}) / 3600", "productive"),
                Query(f"max({leader_only(JOB_BUDGET)}) / 3600", "budget"),
            ],
        ),
    ]


def build() -> dashboard_model.Dashboard:
    """The per-job dashboard."""
    dashboard = (
        new_dashboard(
            UID,
            "kubetune / FineTuneJob",
            "One FineTuneJob: progress, loss, learning rate, online-RL reward and KL, "
            "throughput, step time, memory, checkpoints, restarts, GPU-hours and goodput.",
            tags=["job"],
        )
        .with_variable(
            query_variable(
                "namespace",
                "Namespace",
                NAMESPACES_QUERY,
                "Namespace of the FineTuneJob (local for `kubetune run --local`).",
            )
        )
        .with_variable(
            query_variable(
                "finetunejob",
                "FineTuneJob",
                JOBS_QUERY,
                "The FineTuneJob's name.",
            )
        )
    )
    return with_sections(
        dashboard,
        [
            ("Progress", _progress()),
            ("Loss", _loss()),
            ("Online RL (PPO, GRPO, RLOO)", _online_rl()),
            ("Mixture of experts", _moe()),
            ("Throughput and step time", _throughput()),
            ("Memory", _memory()),
            ("Checkpoints, restarts and GPU-hours", _checkpoints_and_restarts()),
        ],
    )
