"""Run the chaos suite on a fresh dev cluster and write its JSON report.

    python -m tests.chaos.run --faults 200 --seed 1 --report /tmp/chaos-report.json

(``make chaos``). Brings up its own cluster (binaries built and cached as for the e2e tier),
prints the figures as a markdown table and exits 1 when a target is missed (a job lost, a
duplicate gang, a job stuck without a condition saying why).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from kubetune.devcluster import Binaries, DevCluster
from kubetune.devcluster.testing import Cluster
from tests.chaos.harness import ChaosConfig, ChaosRun, iter_problems, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.run", description=__doc__)
    parser.add_argument("--faults", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=ChaosConfig.concurrency)
    parser.add_argument("--report", type=Path, default=Path("chaos-report.json"))
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)

    cfg = ChaosConfig(faults=args.faults, seed=args.seed, concurrency=args.concurrency)
    workdir = Path(tempfile.mkdtemp(prefix="kubetune-chaos-"))
    binaries = Binaries.default()
    dev = DevCluster(workdir / "cluster", binaries)
    print(f"chaos: bringing up a dev cluster in {workdir}", flush=True)
    state = dev.up(build=True, die_with_parent=True, timeout=240)
    cluster = Cluster(dev, binaries, dev.kubeconfig, state.server, dict(state.ports))
    run = ChaosRun(cluster, workdir, cfg, say=lambda line: print("chaos:", line, flush=True))
    try:
        run.setup()
        print(f"chaos: {cfg.faults} faults, seed {cfg.seed}, namespace {run.ns}", flush=True)
        report = run.run()
    finally:
        run.close()
        dev.down()
    args.report.write_text(json.dumps(report, indent=2, default=str))
    print(table(report))
    problems = list(iter_problems(report))
    for line in problems:
        print("chaos:", line)
    print(f"chaos: report in {args.report}; operator logs in {workdir}")
    if not args.keep and not problems:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if report["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
