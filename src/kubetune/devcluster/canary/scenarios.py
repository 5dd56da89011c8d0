"""Scenarios, the lab's settings, and the ModelRollout and analysis each run applies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from kubetune.api.rollout import ModelRollout, as_manifest

BASELINE_MODEL = "canary-base"
CANDIDATE_MODEL = "canary-tuned"
ROUTE = "canary"
#: the candidate's FineTuneJob (the operator names its headless Service after the job, so
#: never the same name as a model's Service)
CANDIDATE_JOB = "canary-lora-job"
SERVICE_PORT = 8000
PORT_NAME = "http"
GATEWAY_GROUP = "gateway.networking.k8s.io"

Outcome = Literal["Promoted", "RolledBack", "Failed", "Inconclusive", "Timeout"]
Log = Callable[[str], None]


# -- scenarios ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Faults:
    """What the candidate server is told to do wrong (``kubetune serve --inject-*``)."""

    latency_s: float = 0.0
    error_rate: float = 0.0
    degenerate_rate: float = 0.0

    def argv(self, seed: int) -> list[str]:
        if not (self.latency_s or self.error_rate or self.degenerate_rate):
            return []
        return [
            f"--inject-latency-seconds={self.latency_s}",
            f"--inject-error-rate={self.error_rate}",
            f"--inject-degenerate-rate={self.degenerate_rate}",
            f"--fault-seed={seed}",
        ]


@dataclass(frozen=True)
class Scenario:
    """A candidate and its traffic, with the outcome a correct rollout must reach."""

    name: str
    description: str
    expected: Outcome
    faults: Faults = field(default_factory=Faults)
    traffic: bool = True
    #: the analysis metric that must abort a bad candidate
    fault_metric: str | None = None

    @property
    def bad(self) -> bool:
        return self.expected == "RolledBack"


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("good", "the tuned LoRA adapter, no faults", "Promoted"),
        Scenario(
            "latency",
            "1 s added to every candidate request",
            "RolledBack",
            Faults(latency_s=1.0),
            fault_metric="p95-latency",
        ),
        Scenario(
            "errors",
            "half the candidate's requests fail with HTTP 500",
            "RolledBack",
            Faults(error_rate=0.5),
            fault_metric="error-rate",
        ),
        Scenario(
            "quality",
            "70 % of the candidate's answers are empty (users vote them down)",
            "RolledBack",
            Faults(degenerate_rate=0.7),
            fault_metric="positive-feedback",
        ),
        Scenario(
            "no-traffic",
            "the tuned adapter, but no requests at all",
            "Inconclusive",
            traffic=False,
        ),
    )
}


@dataclass(frozen=True)
class LabSettings:
    """Timings and load; the defaults keep one run near a minute on 2 CPU cores."""

    interval_seconds: int = 5
    weights: tuple[int, ...] = (25, 50)
    min_intervals: int = 2
    max_intervals: int = 8
    rate: float = 6.0
    concurrency: int = 4
    max_tokens: int = 4
    satisfied_rate: float = 0.8
    min_samples: int = 3
    feedback_min_samples: int = 10
    timeout_s: float = 240.0
    #: after an Inconclusive pause, watch this many more intervals (it must never promote)
    settle_intervals: int = 2
    threads_per_server: int = 1


def analysis_spec(settings: LabSettings, prometheus_url: str) -> dict[str, Any]:
    """The rollout's analysis: latency and errors against the baseline, feedback by SPRT.

    Allowances are generous in absolute terms because the tiny model answers in tens of
    milliseconds on a shared CPU, where scheduling noise is a large relative difference;
    the injected faults are far beyond them.
    """
    n = settings.min_samples
    requests = (
        'sum(increase(vllm:request_success_total{model_name="${model}"}[${interval}])) + '
        'sum(increase(kubetune_serve_request_errors_total{model_name="${model}"}[${interval}]))'
    )
    errors = (
        'sum(increase(kubetune_serve_request_errors_total{model_name="${model}"}[${interval}]))'
    )
    feedback = 'sum(increase(kubetune_serve_feedback_total{model_name="${model}"%s}[${window}]))'
    return {
        "intervalSeconds": settings.interval_seconds,
        "prometheus": {"address": prometheus_url},
        "metrics": [
            {
                "name": "p95-latency",
                "direction": "LowerIsBetter",
                "query": "histogram_quantile(0.95, sum by (le) (rate("
                'vllm:e2e_request_latency_seconds_bucket{model_name="${model}"}[${interval}])))',
                "baseline": {"maxRelativeDegradation": 1.0, "maxAbsoluteDegradation": 0.4},
                "samplesQuery": "sum(increase(vllm:e2e_request_latency_seconds_count"
                '{model_name="${model}"}[${interval}]))',
                "minSamples": n,
            },
            {
                "name": "error-rate",
                "direction": "LowerIsBetter",
                "query": f"({errors}) / clamp_min({requests}, 1)",
                "baseline": {"maxAbsoluteDegradation": 0.1},
                "samplesQuery": requests,
                "minSamples": n,
            },
            {
                "name": "positive-feedback",
                "direction": "HigherIsBetter",
                "sequential": {
                    "type": "Proportion",
                    "successQuery": feedback % ',rating="positive"',
                    "totalQuery": feedback % "",
                    "minimumDetectableEffect": 0.4,
                    # a false promotion is the costly error: beta small; alpha 0.05 lets a
                    # clearly worse candidate go on the first ratings that show it
                    "alpha": 0.05,
                    "beta": 0.01,
                },
                "minSamples": settings.feedback_min_samples,
            },
        ],
    }


def rollout_manifest(
    name: str, namespace: str, settings: LabSettings, prometheus_url: str, job: str
) -> dict[str, Any]:
    """The ModelRollout (validated by the API model before it is sent)."""
    steps: list[dict[str, Any]] = []
    for weight in settings.weights:
        steps.append({"setWeight": weight})
        steps.append(
            {
                "analysis": {
                    "minIntervals": settings.min_intervals,
                    "maxIntervals": settings.max_intervals,
                }
            }
        )
    doc = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "target": {"kind": "HTTPRoute", "name": ROUTE},
            "baseline": {
                "modelName": BASELINE_MODEL,
                "backendRef": {"name": BASELINE_MODEL, "port": SERVICE_PORT},
            },
            "candidate": {
                "modelName": CANDIDATE_MODEL,
                "backendRef": {"name": CANDIDATE_MODEL, "port": SERVICE_PORT},
                "fineTuneJob": job,
            },
            "steps": steps,
            "progressDeadlineSeconds": 300,
            "analysis": analysis_spec(settings, prometheus_url),
        },
    }
    return as_manifest(ModelRollout.model_validate(doc))
