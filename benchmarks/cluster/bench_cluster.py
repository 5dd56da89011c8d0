"""Benchmark the local dev cluster: cached ``up`` time and resident memory per process.

    python benchmarks/cluster/bench_cluster.py [--runs 3] [--settle 10] [--json out.json]

Needs the binaries in the cache (``kubetune dev cluster build``). Each run starts a cluster in a
fresh temporary state directory, measures the time until it is ready (API server ready, the six
fake nodes Ready and schedulable, the default ServiceAccount present), waits ``--settle`` seconds,
reads VmRSS of every control plane process, and tears the cluster down again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from kubetune.devcluster import Binaries, DevCluster


def one_run(settle: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="kubetune-bench-"))
    dev = DevCluster(tmp / "cluster")
    t0 = time.monotonic()
    try:
        dev.up(build=False, die_with_parent=True)
        up_s = time.monotonic() - t0
        rss_ready = dev.rss_mib()
        time.sleep(settle)
        rss_settled = dev.rss_mib()
    finally:
        dev.down()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "up_seconds": round(up_s, 2),
        "rss_mib_ready": rss_ready,
        "rss_mib_settled": rss_settled,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settle", type=float, default=10.0, help="seconds to wait before the RSS")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    binaries = Binaries.default()
    missing = binaries.missing()
    if missing:
        raise SystemExit(f"binaries missing for {missing}: run `kubetune dev cluster build` first")

    runs = [one_run(args.settle) for _ in range(args.runs)]
    ups = [r["up_seconds"] for r in runs]
    procs = sorted(runs[-1]["rss_mib_settled"])
    rss = {p: statistics.median(r["rss_mib_settled"].get(p, 0.0) for r in runs) for p in procs}
    total = round(sum(rss.values()), 1)
    result: dict[str, Any] = {
        "versions": binaries.versions.__dict__,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "runs": runs,
        "up_seconds": {"min": min(ups), "median": statistics.median(ups), "max": max(ups)},
        "rss_mib_settled_median": rss,
        "rss_mib_settled_total": total,
    }

    print(
        f"cached up (ready): min {min(ups):.2f}s  median {statistics.median(ups):.2f}s  "
        f"max {max(ups):.2f}s over {len(ups)} runs"
    )
    print(f"RSS after {args.settle:.0f}s settle (median of runs):")
    for p, v in rss.items():
        print(f"  {p:<24} {v:8.1f} MiB")
    print(f"  {'total':<24} {total:8.1f} MiB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
