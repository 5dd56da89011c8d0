"""Rollout decisions benchmark: how often and how fast a ModelRollout decides right.

Every run is one scenario of kubetune/devcluster/canary/ from scratch: a fresh namespace,
fresh ``kubetune serve`` processes (baseline: the tiny base model; candidate: the base plus a
LoRA adapter trained once by the real trainer, or with injected faults), a fresh HTTPRoute,
router and candidate FineTuneJob, the ModelRollout, and simulated users through the router.
The operator (one process for the whole benchmark, admin kubeconfig) and Prometheus (1 s
scrapes) are real and shared by the runs; so is a dev cluster of its own brought up for the
benchmark. Scenarios are interleaved (round 1: good, latency, ..., round 2: ...); the seed of
run ``r`` of scenario number ``i`` is ``1000 * r + i`` (load arrivals, prompts, simulated
users' ratings, fault injection draws).

Reported per scenario: outcome counts; false rollbacks (a good candidate RolledBack, or a
no-traffic one: anything but Promoted / Inconclusive), false promotions (a bad candidate
Promoted); and for the bad scenarios the time to detect. Definitions
(``CanaryResult`` in kubetune/devcluster/canary/result.py):

* ``fault visible``: the time of the first analysis measurement of the scenario's fault
  metric taken with the candidate at weight > 0 and with enough candidate samples to judge
  (verdict Successful/Failed, or candidate samples >= minSamples). The fault is injected from
  the first request, so this is the first measurement that could have seen it.
* ``detect``: fault visible -> the route's candidate weight observed written back to 0 (a
  watch on the HTTPRoute), in seconds and in analysis intervals.
* ``react``: the first Failed measurement (or the sequential test's Worse, i.e. the abort) ->
  that weight-0 write (the "within one analysis interval" promise).
* ``exposure``: the candidate's first traffic (the first route write with its weight > 0) ->
  that weight-0 write: how long users saw the bad candidate, in seconds and intervals.

Usage: ``python benchmarks/rollout/bench_rollout.py --repeats 3 [--scenarios good,latency,...]
[--out benchmarks/rollout/results.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kubetune.devcluster import DevCluster
from kubetune.devcluster.canary import (
    SCENARIOS,
    CanaryLab,
    CanaryModels,
    CanaryResult,
    LabSettings,
    analysis_spec,
    ensure_crds,
    operator_process,
)
from kubetune.devcluster.canary.plot import plot_result
from kubetune.devcluster.cluster import run_kubectl
from kubetune.devcluster.gateway import GatewayAPI
from kubetune.devcluster.prometheus import PrometheusServer
from kubetune.devcluster.versions import cache_dir
from kubetune_trainer.assets.canary_models import ensure_models

REPO = Path(__file__).resolve().parents[2]


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "median": None, "max": None, "min": None}
    return {
        "n": len(values),
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def summarize(runs: list[dict[str, Any]], interval: int) -> dict[str, Any]:
    """Per scenario: outcomes, false decisions, detection and reaction times."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(r["scenario"] for r in runs):
        mine = [r for r in runs if r["scenario"] == name]
        scenario = SCENARIOS[name]
        outcomes: dict[str, int] = {}
        for r in mine:
            outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        detect = [r["detect_s"] for r in mine if r["detect_s"] is not None]
        react = [r["react_s"] for r in mine if r["react_s"] is not None]
        exposure = [r["exposure_s"] for r in mine if r["exposure_s"] is not None]
        out[name] = {
            "runs": len(mine),
            "expected": scenario.expected,
            "outcomes": outcomes,
            "correct": sum(r["correct"] for r in mine),
            "false_rollbacks": 0
            if scenario.bad
            else sum(r["outcome"] in ("RolledBack", "Failed") for r in mine),
            "false_promotions": sum(r["outcome"] == "Promoted" for r in mine)
            if scenario.expected != "Promoted"
            else 0,
            "abort_metrics": sorted({(r["abort"] or {}).get("metric") or "-" for r in mine}),
            "detect_s": _stats(detect),
            "detect_intervals": _stats([d / interval for d in detect]),
            "react_s": _stats(react),
            "exposure_s": _stats(exposure),
            "exposure_intervals": _stats([e / interval for e in exposure]),
            "run_seconds": _stats([r["finished_at"] - r["started_at"] for r in mine]),
        }
    return out


def markdown(result: dict[str, Any]) -> str:
    interval = result["settings"]["interval_seconds"]
    lines = [
        f"| scenario ({result['settings']['repeats']} runs each) | expected | outcomes | "
        "false rollbacks | false promotions | abort metric | detect s, median / max | "
        f"detect, intervals of {interval} s, median / max | react s, median / max | "
        "exposure s, median / max | exposure, intervals, median / max |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def pair(stats: dict[str, Any]) -> str:
        return "-" if not stats["n"] else f"{stats['median']} / {stats['max']}"

    for name, s in result["summary"].items():
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(s["outcomes"].items()))
        lines.append(
            f"| {name} | {s['expected']} | {outcomes} | {s['false_rollbacks']} | "
            f"{s['false_promotions']} | {', '.join(s['abort_metrics'])} | {pair(s['detect_s'])} | "
            f"{pair(s['detect_intervals'])} | {pair(s['react_s'])} | {pair(s['exposure_s'])} | "
            f"{pair(s['exposure_intervals'])} |"
        )
    return "\n".join(lines)


def compact(result: CanaryResult) -> dict[str, Any]:
    """A run without its per-second timeline (kept apart: it is large)."""
    doc = result.to_json()
    doc.pop("timeline")
    doc["measurements"] = [
        {k: m.get(k) for k in ("metric", "time", "step", "weight", "verdict", "candidate",
                               "baseline", "candidateSamples", "limit")}
        for m in doc["measurements"]
    ]  # fmt: skip
    return doc


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="kubetune-bench-rollout-"))
    dev = DevCluster(workdir / "cluster")
    settings = LabSettings(interval_seconds=args.interval, rate=args.rate)
    state = dev.up(build=True, timeout=180)
    prom = PrometheusServer(workdir / "prometheus")
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
        "cluster": state.versions,
        "settings": {
            "repeats": args.repeats,
            "scenarios": args.scenarios,
            "interval_seconds": settings.interval_seconds,
            "weights": list(settings.weights),
            "min_intervals": settings.min_intervals,
            "max_intervals": settings.max_intervals,
            "rate_rps": settings.rate,
            "concurrency": settings.concurrency,
            "max_tokens": settings.max_tokens,
            "satisfied_rate": settings.satisfied_rate,
            "scrape_interval": "1s",
            "seeds": "1000 * round + scenario index",
            "faults": {n: vars(s.faults) for n, s in SCENARIOS.items()},
            "analysis": analysis_spec(settings, "http://prometheus")["metrics"],
        },
        "runs": [],
    }
    try:
        GatewayAPI(dev).up(timeout=120)
        ensure_crds(dev.kubeconfig)
        pstate = prom.up(
            prom.settings(operator_targets=(), scrape_interval="1s"),
            retention="1d",
            die_with_parent=True,
        )
        models = CanaryModels(*ensure_models(cache_dir() / "canary-models", log=print))
        with operator_process(dev.kubeconfig, workdir / "operator.log"):
            for round_ in range(args.repeats):
                for index, name in enumerate(args.scenarios):
                    seed = 1000 * round_ + index
                    namespace = f"bench-{name}-{uuid.uuid4().hex[:4]}"
                    run_kubectl(["create", "namespace", namespace], kubeconfig=dev.kubeconfig)
                    lab = CanaryLab(
                        dev.kubeconfig,
                        namespace,
                        pstate.url,
                        prom.file_sd_dir,
                        workdir / "runs" / namespace,
                        models,
                        settings,
                        log=lambda m: print(m, file=sys.stderr, flush=True),
                    )
                    outcome = lab.run(SCENARIOS[name], seed=seed)
                    doc = compact(outcome)
                    doc["loadavg_end"] = os.getloadavg()
                    result["runs"].append(doc)
                    if args.timelines:
                        path = args.timelines / f"{namespace}.json"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_text(json.dumps(outcome.to_json(), default=str))
                        plot_result(outcome, path.with_suffix(".png"))
                    run_kubectl(
                        ["delete", "namespace", namespace, "--wait=false"],
                        kubeconfig=dev.kubeconfig,
                        check=False,
                    )
                    print(
                        f"{name} seed {seed}: {outcome.outcome} detect {outcome.detect_s} "
                        f"react {outcome.react_s}",
                        flush=True,
                    )
                    if args.out:  # partial results survive an interrupted run
                        write(args.out, result, settings.interval_seconds)
    finally:
        prom.down()
        dev.down()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory kept: {workdir}")
    result["summary"] = summarize(result["runs"], settings.interval_seconds)
    return result


def write(path: Path, result: dict[str, Any], interval: int) -> None:
    result["summary"] = summarize(result["runs"], interval)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per scenario")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        type=lambda v: [x for x in v.split(",") if x],
        help=f"comma-separated, of: {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--interval", type=int, default=5, help="analysis interval, seconds")
    parser.add_argument("--rate", type=float, default=6.0, help="requests per second")
    parser.add_argument("--out", type=Path, default=None, help="results JSON")
    parser.add_argument(
        "--timelines",
        type=Path,
        default=None,
        help="dir for full timelines (JSON) and their pictures (PNG)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    result = run(args)
    if args.out:
        write(args.out, result, args.interval)
    print(markdown(result))


if __name__ == "__main__":
    main()
