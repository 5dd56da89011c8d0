"""The ModelRollout controller end to end: the real operator process (least-privilege
ServiceAccount) on the dev cluster, a real Gateway API HTTPRoute, and a stub Prometheus
answering chosen query results (the model servers and a real Prometheus are the canary
test's business: test_canary_e2e.py).

* promotion through steps: the route's weights follow the steps up to 100 %;
* abort on a failing metric: the candidate's weight is 0 on the route within one analysis
  interval of the failing measurement;
* inconclusive with no data: the rollout pauses, never promotes, and a manual promote
  moves it on.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.devcluster.canary import ensure_rollout_crd
from kubetune.devcluster.gateway import GatewayAPI
from kubetune.devcluster.testing import Cluster, wait_until
from tests.e2e.operator_helpers import (
    OperatorProcess,
    install,
    kget,
    manifest,
    stop_shared_operator,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

INTERVAL = 5  # the smallest analysis interval the CRD admits


class StubPrometheus:
    """``/api/v1/query`` answering by the metric name in the query and the model in it:
    ``good_latency`` 0.5 for both models, ``bad_latency`` 5 for the candidate (0.5 for the
    baseline), ``no_data`` an empty vector."""

    def __init__(self) -> None:
        stub = self
        self.queries: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, query: str) -> None:
                stub.queries.append(query)
                if "no_data" in query:
                    result: list[Any] = []
                else:
                    value = 5.0 if "bad_latency" in query and '"tuned"' in query else 0.5
                    result = [{"metric": {}, "value": [time.time(), str(value)]}]
                body = json.dumps(
                    {"status": "success", "data": {"resultType": "vector", "result": result}}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                self._answer(form.get("query", [""])[0])

            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                self._answer(query.get("query", [""])[0])

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module", name="prometheus")
def prometheus_fixture() -> Iterator[StubPrometheus]:
    stub = StubPrometheus()
    yield stub
    stub.close()


@pytest.fixture(scope="module", name="rollout_operator")
def rollout_operator_fixture(
    cluster: Cluster, gateway_api: GatewayAPI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The real operator, started after the ModelRollout and Gateway API CRDs exist (its
    rollout controller switches on only where the API is served)."""
    ensure_rollout_crd(cluster.kubeconfig, cluster.kubectl_path)
    stop_shared_operator()
    workdir: Path = tmp_path_factory.mktemp("rollout-operator")
    replica = OperatorProcess(install(cluster, workdir), workdir, "rollout").start()
    try:
        replica.wait_ready(timeout=90)
        yield replica
    finally:
        replica.stop()
        print(replica.log_tail(200))


def apply(cluster: Cluster, doc: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))


def promotable_job(cluster: Cluster, namespace: str, name: str) -> None:
    """A FineTuneJob that Succeeded with Promotable=True (status written by hand; suspended
    so that the operator runs nothing for it before the status says it is done)."""
    apply(cluster, manifest(name, namespace, runPolicy={"suspend": True}))
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {
        "phase": "Succeeded",
        "conditions": [
            {
                "type": "Promotable",
                "status": "True",
                "reason": "EvaluationPassed",
                "message": "every gate passed",
                "lastTransitionTime": now,
            }
        ],
    }
    cluster.kubectl(
        "patch",
        "finetunejob",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
        namespace=namespace,
    )


def route(cluster: Cluster, namespace: str) -> None:
    apply(
        cluster,
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "chat", "namespace": namespace},
            "spec": {
                "rules": [
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/docs"}}],
                        "backendRefs": [{"name": "docs", "port": 80}],
                    },
                    {"backendRefs": [{"name": "base", "port": 8000, "weight": 100}]},
                ]
            },
        },
    )


def rollout(namespace: str, steps: list[Any], metric: str, prometheus: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": "chat-v2", "namespace": namespace},
        "spec": {
            "target": {"name": "chat", "ruleIndex": 1},
            "baseline": {"modelName": "base", "backendRef": {"name": "base", "port": 8000}},
            "candidate": {
                "modelName": "tuned",
                "backendRef": {"name": "tuned", "port": 8000},
                "fineTuneJob": "sft",
            },
            "steps": steps,
            "analysis": {
                "intervalSeconds": INTERVAL,
                "prometheus": {"address": prometheus},
                "metrics": [
                    {
                        "name": "latency",
                        "direction": "LowerIsBetter",
                        "query": f'{metric}{{model_name="${{model}}"}}',
                        "threshold": 1.0,
                    }
                ],
            },
            "progressDeadlineSeconds": 120,
        },
    }


def weights(cluster: Cluster, namespace: str) -> dict[str, int]:
    doc = kget(cluster, "httproute", "chat", namespace=namespace)
    rule = doc["spec"]["rules"][1]
    other = doc["spec"]["rules"][0]["backendRefs"]  # another rule: never touched
    assert [(r["name"], r.get("weight", 1)) for r in other] == [("docs", 1)]
    return {ref["name"]: int(ref.get("weight", 1)) for ref in rule["backendRefs"]}


def status(cluster: Cluster, namespace: str) -> dict[str, Any]:
    return dict(kget(cluster, "modelrollout", "chat-v2", namespace=namespace).get("status") or {})


def watch(cluster: Cluster, namespace: str, until: str, timeout: float) -> list[tuple[float, int]]:
    """(time, candidate weight) every time the route's weight changes, until the rollout
    reaches phase ``until``."""
    seen: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # the phase first: the controller writes the route before the status, so the weight
        # read after a final phase is the final weight
        done = status(cluster, namespace).get("phase") == until
        weight = weights(cluster, namespace).get("tuned", 0)
        if not seen or seen[-1][1] != weight:
            seen.append((time.monotonic(), weight))
        if done:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"no phase {until}: {status(cluster, namespace)}; weights {seen}")


def rollout_events(cluster: Cluster, namespace: str) -> list[tuple[str, str]]:
    items = kget(
        cluster,
        "events",
        "--field-selector",
        "involvedObject.kind=ModelRollout",
        namespace=namespace,
    )["items"]
    return [(e["type"], e["reason"]) for e in items]


def test_promotion_through_steps(
    cluster: Cluster, namespace: str, rollout_operator: OperatorProcess, prometheus: StubPrometheus
) -> None:
    promotable_job(cluster, namespace, "sft")
    route(cluster, namespace)
    steps = [
        {"setWeight": 20},
        {"analysis": {"minIntervals": 1, "maxIntervals": 4}},
        {"setWeight": 50},
        {"analysis": {"minIntervals": 1, "maxIntervals": 4}},
    ]
    apply(cluster, rollout(namespace, steps, "good_latency", prometheus.address))
    seen = watch(cluster, namespace, "Promoted", timeout=120)
    assert [w for _, w in seen if w > 0] == [20, 50, 100]
    assert weights(cluster, namespace) == {"base": 0, "tuned": 100}
    st = status(cluster, namespace)
    assert st["currentStep"] == 4 and st["candidateWeight"] == 100
    assert {c["type"]: c["status"] for c in st["conditions"]}["Promoted"] == "True"
    assert all(m["verdict"] == "Successful" for m in st["measurements"])
    assert any('"tuned"' in q for q in prometheus.queries)
    assert any('"base"' in q for q in prometheus.queries)
    wait_until(
        lambda: ("Normal", "Promoted") in rollout_events(cluster, namespace),
        timeout=10,
        what="the Promoted Event",
    )
    metrics = rollout_operator.metrics()
    assert (
        f'kubetune_rollout_promotions_total{{modelrollout="chat-v2",namespace="{namespace}"}} 1.0'
        in metrics
    )
    assert (
        f'kubetune_rollout_candidate_weight{{modelrollout="chat-v2",namespace="{namespace}"}} 100.0'
        in metrics
    )


def test_abort_on_a_failing_metric_zeroes_the_route_within_one_interval(
    cluster: Cluster, namespace: str, rollout_operator: OperatorProcess, prometheus: StubPrometheus
) -> None:
    promotable_job(cluster, namespace, "sft")
    route(cluster, namespace)
    steps = [{"setWeight": 30}, {"pause": {}}]
    apply(cluster, rollout(namespace, steps, "bad_latency", prometheus.address))
    seen = watch(cluster, namespace, "RolledBack", timeout=90)
    at_30 = next(t for t, w in seen if w == 30)
    at_0 = next(t for t, w in seen if w == 0 and t > at_30)
    # traffic starts, the first measurement is due one interval later, and fails: the
    # route is written in the same reconcile (plus this test's 0.2 s polling).
    print(f"candidate weight 30 -> 0 after {at_0 - at_30:.2f}s (interval {INTERVAL}s)")
    assert at_0 - at_30 <= INTERVAL + 2.0, seen
    st = status(cluster, namespace)
    assert st["abort"]["reason"] == "MetricFailed" and st["abort"]["metric"] == "latency"
    failed = [m for m in st["measurements"] if m["verdict"] == "Failed"]
    assert failed and failed[0]["candidate"] == 5.0 and failed[0]["baseline"] == 0.5
    assert st["abort"]["time"] >= failed[0]["time"][:19]
    assert weights(cluster, namespace) == {"base": 100, "tuned": 0}
    wait_until(
        lambda: ("Warning", "MetricFailed") in rollout_events(cluster, namespace),
        timeout=10,
        what="the MetricFailed Event",
    )
    time.sleep(INTERVAL + 1)  # not retried: the weight stays 0
    assert status(cluster, namespace)["phase"] == "RolledBack"
    assert weights(cluster, namespace)["tuned"] == 0


def test_no_data_pauses_as_inconclusive_and_never_promotes(
    cluster: Cluster, namespace: str, rollout_operator: OperatorProcess, prometheus: StubPrometheus
) -> None:
    promotable_job(cluster, namespace, "sft")
    route(cluster, namespace)
    steps = [
        {"setWeight": 10},
        {"analysis": {"minIntervals": 1, "maxIntervals": 2}},
        {"setWeight": 40},
        {"pause": {}},  # holds 40 % (without it the rollout promotes to 100 % at once)
    ]
    apply(cluster, rollout(namespace, steps, "no_data", prometheus.address))
    wait_until(
        lambda: status(cluster, namespace).get("pauseReason") == "AnalysisInconclusive",
        timeout=60,
        what="an inconclusive pause",
    )
    st = status(cluster, namespace)
    assert st["phase"] == "Paused" and st["currentStep"] == 1
    assert "inconclusive" in st["message"]
    assert {m["verdict"] for m in st["measurements"]} == {"Inconclusive"}
    time.sleep(2 * INTERVAL)  # never promotes by itself
    assert status(cluster, namespace)["phase"] == "Paused"
    assert weights(cluster, namespace)["tuned"] == 10
    cluster.kubectl(
        "annotate", "modelrollout", "chat-v2", "kubetune.io/promote=step", namespace=namespace
    )
    wait_until(
        lambda: weights(cluster, namespace).get("tuned") == 40,
        timeout=30,
        what="the next step's weight after a manual promote",
    )
    annotations = (
        kget(cluster, "modelrollout", "chat-v2", namespace=namespace)["metadata"].get("annotations")
        or {}
    )
    assert "kubetune.io/promote" not in annotations
