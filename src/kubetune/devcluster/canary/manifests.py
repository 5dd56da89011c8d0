"""The serving side's Kubernetes objects: the HTTPRoute, and the candidate's KWOK FineTuneJob."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune.devcluster.canary.scenarios import (
    BASELINE_MODEL,
    CANDIDATE_MODEL,
    GATEWAY_GROUP,
    ROUTE,
    SERVICE_PORT,
)


# -- Kubernetes objects of the serving side ------------------------------------------------------
def route_manifest(namespace: str) -> dict[str, Any]:
    """The serving route: all traffic to the baseline, the candidate listed at weight 0."""
    return {
        "apiVersion": f"{GATEWAY_GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": ROUTE, "namespace": namespace},
        "spec": {
            "parentRefs": [{"name": "canary-gateway"}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
                    "backendRefs": [
                        {"name": BASELINE_MODEL, "port": SERVICE_PORT, "weight": 100},
                        {"name": CANDIDATE_MODEL, "port": SERVICE_PORT, "weight": 0},
                    ],
                }
            ],
        },
    }


def route_weights(route: Mapping[str, Any]) -> dict[str, int]:
    """Backend name -> weight in rule 0 (the default weight of a listed ref is 1)."""
    rules = (route.get("spec") or {}).get("rules") or []
    refs = rules[0].get("backendRefs") or [] if rules else []
    return {str(r["name"]): int(r.get("weight", 1)) for r in refs}


# -- the candidate's FineTuneJob (KWOK) ----------------------------------------------------------
def job_manifest(name: str, namespace: str) -> dict[str, Any]:
    """A one-pod LoRA job whose fake pods the lab finishes (never really trained)."""
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "method": "lora",
            "model": {"uri": "/models/tiny-llama"},
            "dataset": {"train": "/data/train.jsonl", "eval": "/data/eval.jsonl", "format": "chat"},
            "hyperparameters": {"globalBatchSize": 8, "microBatchSize": 2, "learningRate": 2e-4},
            "resources": {"nodes": 1, "gpusPerNode": 1, "cpu": "2", "memory": "8Gi"},
            "output": {
                "uri": f"s3://results/{name}",
                "credentialsSecretRef": {"name": "canary-s3"},
            },
            "runPolicy": {"backoffLimit": 1, "schedulingTimeoutSeconds": 30},
            "evaluation": {
                "gates": [{"metric": "heldOut/loss", "noWorseThanBaseline": {"tolerance": 0.05}}]
            },
        },
    }


def passed_evaluation_message() -> str:
    """Rank 0's termination message: training done, evaluation gates passed."""
    from kubetune.contract.evaluation import (
        EvaluationSummary,
        GateSummary,
        MetricSummary,
        termination_message,
    )

    summary = EvaluationSummary(
        verdict="Passed",
        baseline="base",
        confidence=0.95,
        metrics=[
            MetricSummary(name="heldOut/loss", baseline=6.3, tuned=6.1, delta=-0.2, samples=40)
        ],
        gates=[GateSummary(metric="heldOut/loss", rule="noWorseThanBaseline", passed=True)],
    )
    return termination_message("training finished: 4 steps; evaluation Passed", summary)
