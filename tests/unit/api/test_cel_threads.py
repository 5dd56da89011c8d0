"""CEL rules evaluated from several threads at once (the operator validates in worker
threads): each thread gets its own compiled program, so evaluations never mix.

A shared celpy Runner keeps its activation on itself while evaluating; under load one
valid job in a few hundred failed with another rule's variables ("no such member in
mapping"). The race is too rare to provoke reliably in a test, so the first test checks
the structure that rules it out."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubetune.api import cel
from kubetune.api.validation import validate_manifest


def _manifests(count: int) -> list[dict[str, Any]]:
    shapes = [(1, 2), (2, 4), (3, 2), (2, 2)]
    out = []
    for i in range(count):
        nodes, gpus = shapes[i % len(shapes)]
        out.append(
            {
                "apiVersion": "kubetune.io/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": f"j{i}", "namespace": "ns"},
                "spec": {
                    "method": "lora",
                    "model": {"uri": "/models/tiny"},
                    "dataset": {"train": "/data/train.jsonl", "format": "chat"},
                    "hyperparameters": {"globalBatchSize": 2 * nodes * gpus, "microBatchSize": 1},
                    "resources": {"nodes": nodes, "gpusPerNode": gpus, "memory": "64Gi"},
                    "output": {"uri": f"pvc://ckpt/j{i}"},
                },
            }
        )
    return out


def test_each_thread_gets_its_own_program() -> None:
    expression = "self.a + 1 == 2"
    programs: list[object] = []

    def grab() -> None:
        programs.append(cel._program(expression))
        programs.append(cel._program(expression))  # cached within the thread

    threads = [threading.Thread(target=grab) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert programs[0] is programs[1] and programs[2] is programs[3]
    assert programs[0] is not programs[2]


def test_concurrent_validation_of_valid_jobs_finds_no_problem() -> None:
    with ThreadPoolExecutor(8) as pool:
        reports = list(pool.map(validate_manifest, _manifests(64)))
    assert [str(p) for r in reports for p in r.errors] == []
