"""Crash safety, leader failover and least privilege, with real operator processes."""

from __future__ import annotations

import json
import time

import pytest

from kubetune.devcluster.testing import Cluster, wait_until
from tests.e2e.operator_helpers import (  # noqa: F401  (fixtures)
    OPERATOR_NAMESPACE,
    SERVICE_ACCOUNT,
    Operators,
    apply,
    events,
    finish_pod,
    finish_validation,
    job_status,
    lease_holder,
    manifest,
    ns_fixture,
    operator_fixture,
    operators_fixture,
    start_running,
    wait_phase,
    worker_pods,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def test_killing_the_operator_mid_creation_makes_no_duplicate_gang(
    cluster: Cluster, ns: str, operator: Operators
) -> None:
    apply(
        cluster,
        manifest(
            "crash",
            ns,
            resources={"nodes": 4},
            hyperparameters={"globalBatchSize": 64, "microBatchSize": 2},
        ),
    )
    finish_validation(cluster, ns, "crash")
    operator.leader.kill()  # SIGKILL while it creates the gang
    replica = operator.spawn()
    replica.wait_ready()
    status = wait_phase(cluster, ns, "crash", "Running", timeout=60)
    names = [p["metadata"]["name"] for p in worker_pods(cluster, ns, "crash")]
    assert names == ["crash-a1-0", "crash-a1-1", "crash-a1-2", "crash-a1-3"]
    assert status["attempts"] == 1


def test_failure_while_the_operator_is_down_restarts_once(
    cluster: Cluster, ns: str, operator: Operators
) -> None:
    start_running(cluster, ns, "down")
    operator.leader.kill()
    finish_pod(cluster, ns, "down-a1-0", 75, message="interrupted")
    replica = operator.spawn()
    replica.wait_ready()
    # The job still shows attempt 1 Running from before the crash: wait for the new
    # leader to notice the failed pod and start attempt 2.
    status = wait_until(
        lambda: (
            (s := job_status(cluster, ns, "down")).get("phase") == "Running"
            and s.get("attempts", 0) >= 2
            and s
        ),
        timeout=60,
        what="attempt 2 of down Running",
    )
    assert status["attempts"] == 2
    time.sleep(3)  # any duplicate reaction would show by now
    assert job_status(cluster, ns, "down")["attempts"] == 2
    assert [p["metadata"]["name"] for p in worker_pods(cluster, ns, "down")] == [
        "down-a2-0",
        "down-a2-1",
    ]
    restarts = [e for e in events(cluster, ns, "down") if e["reason"] == "Restarting"]
    assert len(restarts) == 1


def test_leader_failover(cluster: Cluster, ns: str, operator: Operators) -> None:
    leader = operator.leader
    standby = operator.spawn()
    wait_until(
        lambda: "kubetune_operator_leader 0.0" in _metrics(standby),
        timeout=30,
        what="the second replica to stand by",
    )
    assert lease_holder(cluster) == leader.name
    start_running(cluster, ns, "before")
    assert not standby.is_leader(), "only one replica acts"

    leader.kill()
    standby.wait_ready(timeout=30)
    wait_until(lambda: lease_holder(cluster) == standby.name, timeout=10, what="lease moved")
    # The new leader serves old and new jobs.
    finish_pod(cluster, ns, "before-a1-0", 0)
    finish_pod(cluster, ns, "before-a1-1", 0)
    wait_phase(cluster, ns, "before", "Succeeded", timeout=30)
    start_running(cluster, ns, "after")


def test_clean_shutdown_hands_the_lease_over_at_once(
    cluster: Cluster, ns: str, operator: Operators
) -> None:
    leader = operator.leader
    standby = operator.spawn()
    wait_until(
        lambda: "kubetune_operator_leader 0.0" in _metrics(standby), timeout=30, what="standby"
    )
    started = time.monotonic()
    assert leader.stop() == 0
    standby.wait_ready(timeout=10)
    assert time.monotonic() - started < 8


def test_operator_runs_with_least_privilege(cluster: Cluster, operator: Operators) -> None:
    who = json.loads(
        cluster.kubectl(
            "auth", "whoami", "-o", "json", "--kubeconfig", str(operator.kubeconfig)
        ).stdout
    )
    user = who["status"]["userInfo"]["username"]
    assert user == f"system:serviceaccount:{OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}"
    sa = f"--as={user}"

    def can(*args: str) -> bool:
        proc = cluster.kubectl("auth", "can-i", *args, sa, check=False)
        return proc.stdout.strip() == "yes"

    assert can("create", "pods", "-n", "default")
    assert can("patch", "finetunejobs", "--subresource=status", "-n", "default")
    assert can("list", "nodes")
    # the event recorder aggregates a repeat into the existing Event (count + 1)
    assert can("patch", "events", "-n", "default")
    assert not can("get", "secrets", "-n", "default"), "no access to credentials"
    assert not can("create", "pods", "--subresource=exec", "-n", "default")
    assert not can("update", "finetunejobs", "-n", "default"), "spec belongs to the user"
    assert not can("delete", "nodes")
    assert not can("create", "leases", "-n", "default"), "leases only in its namespace"
    assert can("update", "leases", "-n", OPERATOR_NAMESPACE)


def _metrics(replica: object) -> str:
    try:
        return replica.metrics()  # type: ignore[attr-defined,no-any-return]
    except OSError:
        return ""


def test_a_deposed_leaders_status_write_is_refused(
    cluster: Cluster, ns: str, operator: Operators
) -> None:
    """Fencing against the real API server: a status write decided on an older version of
    the job (a leader that lost its lease but has not noticed) is refused, and the status
    the current leader wrote stays."""
    import asyncio

    from kubetune_operator.controller import Controller
    from kubetune_operator.kube import ApiError, Credentials, KubeClient
    from kubetune_operator.metrics import OperatorMetrics
    from kubetune_operator.observed import Observed
    from kubetune_operator.plan import Plan
    from kubetune_operator.settings import OperatorSettings

    apply(cluster, manifest("fenced", ns, runPolicy={"suspend": True}))
    wait_phase(cluster, ns, "fenced", "Suspended", timeout=30)
    seen = json.loads(cluster.kubectl("get", "ftj", "fenced", "-o", "json", namespace=ns).stdout)
    # The job moves on after the deposed leader looked at it.
    cluster.kubectl("annotate", "ftj", "fenced", "example.com/touched=yes", namespace=ns)
    before = job_status(cluster, ns, "fenced")

    async def deposed_write() -> ApiError | None:
        creds = Credentials.load(kubeconfig=str(operator.kubeconfig))
        async with KubeClient(creds) as client:
            settings = OperatorSettings(leader_election=False, identity="deposed")
            controller = Controller(client, settings, OperatorMetrics())
            try:
                await controller.execute(
                    (ns, "fenced"),
                    Observed(raw=seen),
                    Plan(status={**seen["status"], "phase": "Failed"}),
                )
            except ApiError as exc:
                return exc
        return None

    refused = asyncio.run(deposed_write())
    assert refused is not None and refused.conflict, refused
    assert job_status(cluster, ns, "fenced")["phase"] == before["phase"] == "Suspended"
