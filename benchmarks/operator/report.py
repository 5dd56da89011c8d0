"""Render ``RESULTS.md`` from the JSON of ``bench_operator.py`` (``--out``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _row(name: str, stats: dict[str, float]) -> str:
    return f"| {name} | {stats['p50']:.2f} | {stats['p99']:.2f} | {stats['max']:.2f} |"


def render(data: dict[str, Any], command: str) -> str:
    lines = [
        "# Operator benchmark",
        "",
        f"`{command}` -- {data.get('date', '')}, {data['machine']['cpus']} CPUs, "
        f"Kubernetes {data['cluster']['kubernetes']} (etcd {data['cluster']['etcd']}, "
        f"KWOK {data['cluster']['kwok']}), {data['gpu_nodes']} fake GPU nodes x 8 GPUs.",
        "",
        "Each FineTuneJob: 2 pods x 1 GPU, LoRA, validation on (the validate-only pod is "
        "completed by KWOK through the operator's generic `validation_pod_annotations` "
        "setting). The operator runs as its own process with leader election; latencies are "
        "measured by a watcher in the harness: from the job's ADDED event to ALL its gang pods "
        "existing (and Running).",
        "",
    ]
    for key, case in data.items():
        if not key.startswith("operator_"):
            continue
        lines += [
            f"## Operator -- {case['jobs']} jobs, submitted by {case['submission']} "
            f"({case['submit_seconds']:.1f} s to submit)",
            "",
            "| seconds | p50 | p99 | max |",
            "| --- | --- | --- | --- |",
            _row("job created -> all gang pods created", case["job_to_all_pods_created_s"]),
            _row("job created -> all gang pods Running", case["job_to_all_pods_running_s"]),
        ]
        for stage, stats in case.get("stages_s", {}).items():
            lines.append(_row(f"stage: {stage}", stats))
        usage = case["cpu_usage"]
        lines += [
            "",
            f"* batch: submission start -> last pod created "
            f"{case['batch_apply_start_to_last_pod_created_s']:.1f} s, -> last pod Running "
            f"{case['batch_apply_start_to_last_pod_running_s']:.1f} s",
            f"* operator: {case['operator_cpu_seconds']:.1f} CPU-seconds "
            f"({1000 * case['operator_cpu_seconds'] / case['jobs']:.0f} ms per job), RSS "
            f"{case['operator_rss_before_mib']:.0f} MiB idle, peak "
            f"**{case['operator_peak_rss_mib']:.0f} MiB**; {case['reconciles_per_job']} "
            f"reconciles per job, {case['reconcile_mean_ms']:.0f} ms mean (mostly waiting on the "
            f"API server: {case['operator_api_request_mean_ms']:.0f} ms mean request latency)",
            f"* API requests per job: **{case['operator_api_requests_per_job']:.1f} by the "
            f"operator** ("
            + ", ".join(
                f"{v:g} {k}" for k, v in case["operator_api_requests_by_kind_per_job"].items()
            )
            + f"); {case['apiserver_requests_per_job_all_clients']:.1f} per job at the API "
            "server from all clients (scheduler, KWOK, controllers, harness included)",
            f"* CPU during the window ({usage['window_seconds']:.0f} s, "
            f"{usage['machine_busy_cores']:.2f} of 2 cores busy, load {usage['loadavg_end']}): "
            + ", ".join(f"{k} {v:.1f} s" for k, v in usage["cpu_seconds"].items()),
            "",
        ]
    base = data.get("baseline_kubectl_loop")
    if base:
        usage = base["cpu_usage"]
        lines += [
            f"## Baseline -- a shell loop of `kubectl create -f` per job ({base['jobs']} jobs), "
            "same objects (ConfigMap, Service, 2 pods), no validation, no gate, no status",
            "",
            "| seconds | p50 | p99 | max |",
            "| --- | --- | --- | --- |",
            _row(
                "its kubectl start -> its pods created",
                base["job_kubectl_start_to_all_pods_created_s"],
            ),
            _row("loop start -> job's pods created", base["batch_start_to_job_pods_created_s"]),
            _row("loop start -> job's pods Running", base["batch_start_to_job_pods_running_s"]),
            "",
            f"* loop start -> last pod created {base['batch_start_to_last_pod_created_s']:.1f} s; "
            f"{base['apiserver_requests_per_job_all_clients']:.1f} API server requests per job "
            "(all clients)",
            f'* CPU during the window ({usage["window_seconds"]:.0f} s; "other processes" '
            "includes the loop's kubectl processes): "
            + ", ".join(f"{k} {v:.1f} s" for k, v in usage["cpu_seconds"].items()),
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    command = sys.argv[3] if len(sys.argv) > 3 else "python benchmarks/operator/bench_operator.py"
    text = render(json.loads(source.read_text()), command)
    target.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
