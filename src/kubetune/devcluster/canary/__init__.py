"""The canary lab: a ModelRollout driven end to end on the dev cluster, with real parts.

One harness behind the rollout e2e test, ``benchmarks/rollout/bench_rollout.py`` and the
local demo (``kubetune dev canary``). For one :class:`Scenario` a :class:`CanaryLab` run:

1. starts two ``kubetune serve`` processes on the tiny local model: the baseline (the base
   model) and the candidate (the base plus a LoRA adapter really trained by the trainer, or
   the base with injected faults for a bad candidate); registers both as scrape targets of
   the real Prometheus (file_sd pool ``kubetune-serve``);
2. creates their Services and EndpointSlices (pointing at this machine's address: there is
   no pod network) and the HTTPRoute (baseline 100, candidate 0), and starts the weighted router
   that follows the route's weights (the stand-in for a Gateway data plane);
3. creates the candidate's FineTuneJob and makes it Succeed with ``Promotable=True`` the KWOK
   way (its fake pods exit 0, rank 0 with the evaluation summary in its termination message);
4. creates the ModelRollout (analysis on that Prometheus every ``interval_seconds``), runs the
   load generator (simulated users who post feedback) through the router, and records a
   timeline every second -- route weights, phase, step, and per model the p95 latency, error
   rate and positive-feedback share queried from Prometheus -- until the rollout is
   Promoted, RolledBack or Failed, pauses as Inconclusive, or the time is up.

The operator itself is NOT started here: the e2e tests use the session's operator, the demo
starts one. Detection time is defined in :class:`CanaryResult`.

Modules: ``scenarios`` (what a run does and checks), ``manifests`` (the route and the
candidate's job), ``servers`` (the two model servers), ``timeline`` (metrics sampled from
Prometheus), ``result`` (outcome and detection times), ``lab`` (the run), ``setup`` (CRDs and
an operator process), ``plot`` (the picture; imports matplotlib).
"""

from kubetune.devcluster.canary.lab import CanaryLab
from kubetune.devcluster.canary.manifests import job_manifest, route_manifest, route_weights
from kubetune.devcluster.canary.result import (
    CanaryResult,
    summarize_detection,
    weight_zero_time,
    write_result,
)
from kubetune.devcluster.canary.scenarios import (
    BASELINE_MODEL,
    CANDIDATE_MODEL,
    SCENARIOS,
    Faults,
    LabSettings,
    Scenario,
    analysis_spec,
    rollout_manifest,
)
from kubetune.devcluster.canary.servers import CanaryModels, start_server
from kubetune.devcluster.canary.setup import ensure_crds, ensure_rollout_crd, operator_process
from kubetune.devcluster.canary.timeline import sample_metrics, timeline_queries

__all__ = [
    "BASELINE_MODEL",
    "CANDIDATE_MODEL",
    "SCENARIOS",
    "CanaryLab",
    "CanaryModels",
    "CanaryResult",
    "Faults",
    "LabSettings",
    "Scenario",
    "analysis_spec",
    "ensure_crds",
    "ensure_rollout_crd",
    "job_manifest",
    "operator_process",
    "rollout_manifest",
    "route_manifest",
    "route_weights",
    "sample_metrics",
    "start_server",
    "summarize_detection",
    "timeline_queries",
    "weight_zero_time",
    "write_result",
]
