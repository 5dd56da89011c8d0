"""The chaos smoke run: a small seeded run of every fault kind (``make chaos`` runs 200+).

Asserts the targets: no job lost, no duplicate gang, no job stuck without a condition saying
why. The JSON report is printed on failure (and written to the test's tmp dir).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.devcluster.testing import Cluster
from tests.chaos.faults import KINDS
from tests.chaos.harness import ChaosConfig, ChaosRun, iter_problems, table

pytestmark = [pytest.mark.timeout(420)]

SMOKE = ChaosConfig(faults=20, seed=1, concurrency=6, drain_seconds=120)


def test_chaos_smoke(cluster: Cluster, tmp_path: Path) -> None:
    run = ChaosRun(cluster, tmp_path, SMOKE)
    try:
        run.setup()
        report = run.run()
    finally:
        run.close()
    (tmp_path / "chaos-report.json").write_text(json.dumps(report, indent=2, default=str))
    print(table(report))
    problems = list(iter_problems(report))
    detail = "\n".join(problems) + "\n" + json.dumps(report["operator_logs"], indent=1)
    assert report["faults_injected"] >= SMOKE.faults
    assert {f["kind"] for f in report["faults"]} == set(KINDS), "every fault kind lands"
    assert report["targets"]["jobs_lost"] == 0, detail
    assert report["targets"]["duplicate_gangs"] == 0, detail
    assert report["targets"]["stuck_without_reason"] == 0, detail
    assert report["jobs"]["succeeded"] > 0
