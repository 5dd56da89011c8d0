"""``kubetune dev``: developer tooling.

``kubetune dev cluster build|up|down|env|status`` manages a real local control plane (etcd,
kube-apiserver, kube-controller-manager, kube-scheduler) with KWOK fake GPU nodes, built from
source at pinned versions (see kubetune/devcluster/data/versions.env).

Progress goes to stderr; ``up`` and ``env`` print shell lines on stdout, so
``eval "$(kubetune dev cluster up)"`` points the current shell at the cluster.

``kubetune dev prometheus up|down|status`` runs a real Prometheus scraping the cluster's trainer
pods, the operator and local runs (kubetune/cli/dev_prometheus.py).

``kubetune dev kueue up|down|status`` starts Kueue on the running cluster (never with the cluster
itself; kubetune/cli/dev_kueue.py).

``kubetune dev gateway up|status|down`` installs the Gateway API CRDs on the running cluster, and
``kubetune dev router`` splits requests by one HTTPRoute's weights (there is no Gateway data
plane; kubetune/cli/dev_gateway.py, kubetune/cli/dev_router.py).

``kubetune dev canary --scenario good|latency|errors|quality|no-traffic`` rolls a tuned tiny
model out on the running cluster and saves a picture of weights and metrics over time
(kubetune/cli/dev_canary.py).

``kubetune dev seed -f JOB.yaml`` prepares a FineTuneJob's inputs for the real-pod nodes
(``up --real-nodes N``): the well-known example locations it names (the tiny chat model and
tokenizer, the sample datasets; what ``kubetune run --local`` creates) written into the node
agent's PVC host directories, and the PersistentVolumes and claims of every ``pvc://`` claim
the job uses printed on stdout, for ``| kubectl apply -f -``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from kubetune.cli.dev_canary import canary_cmd
from kubetune.cli.dev_console import StateDirOpt, err, out
from kubetune.cli.dev_console import fail as _fail
from kubetune.cli.dev_gateway import app as gateway_app
from kubetune.cli.dev_kueue import app as kueue_app
from kubetune.cli.dev_loadgen import loadgen as loadgen_cmd
from kubetune.cli.dev_prometheus import app as prometheus_app
from kubetune.cli.dev_router import router_cmd
from kubetune.devcluster import DevCluster, DevClusterError
from kubetune.devcluster.build import build as build_binaries
from kubetune.devcluster.kueue import KueueRunner
from kubetune.devcluster.versions import COMPONENT_BINARIES, Binaries

app = typer.Typer(help="Developer tooling for kubetune.", no_args_is_help=True)
cluster_app = typer.Typer(
    help="A local control plane with fake GPU nodes (etcd + kube-apiserver + "
    "kube-controller-manager + kube-scheduler + KWOK), built from source.",
    no_args_is_help=True,
)
app.add_typer(cluster_app, name="cluster")
app.add_typer(prometheus_app, name="prometheus")
app.add_typer(kueue_app, name="kueue")
app.command("loadgen")(loadgen_cmd)
app.add_typer(gateway_app, name="gateway")
app.command("router")(router_cmd)
app.command("canary")(canary_cmd)


@cluster_app.command("build")
def build_cmd(
    components: Annotated[
        list[str] | None,
        typer.Argument(
            help=f"Components to build (default: missing ones): {list(COMPONENT_BINARIES)}"
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if cached.")] = False,
) -> None:
    """Build the control plane binaries from source and cache them per version."""
    for c in components or []:
        if c not in COMPONENT_BINARIES:
            raise _fail(
                ValueError(f"unknown component {c!r}; choose from {list(COMPONENT_BINARIES)}")
            )
    try:
        binaries = Binaries.default()
        wanted = components or (list(COMPONENT_BINARIES) if force else binaries.missing())
        if not wanted:
            err.print(f"[green]all binaries cached[/] under {binaries.root}")
            return
        lines: deque[str] = deque(maxlen=1)
        with err.status(f"building {', '.join(wanted)} (cold builds take many minutes)") as status:

            def on_line(line: str) -> None:
                lines.append(line)
                if line.startswith("[build.sh"):
                    err.print(line, markup=False, highlight=False)
                status.update(f"building {', '.join(wanted)}: {line[:100]}")

            build_binaries(wanted, force=force, on_line=on_line)
    except DevClusterError as exc:
        raise _fail(exc) from exc
    err.print(f"[green]binaries ready[/] under {binaries.root}")
    for component in wanted:
        err.print(f"  {component:<11} {binaries.component_dir(component)}")


@cluster_app.command("up")
def up_cmd(
    state_dir: StateDirOpt = None,
    apiserver_port: Annotated[
        int,
        typer.Option(
            "--apiserver-port", envvar="KUBETUNE_APISERVER_PORT", help="0 = pick a free port."
        ),
    ] = 0,
    gpu_nodes: Annotated[int, typer.Option(help="Number of fake GPU nodes.")] = 4,
    cpu_nodes: Annotated[int, typer.Option(help="Number of fake CPU-only nodes.")] = 2,
    gpus_per_node: Annotated[int, typer.Option(help="nvidia.com/gpu per GPU node.")] = 8,
    real_nodes: Annotated[
        int,
        typer.Option(
            help="Nodes whose pods really run as sandboxed local processes (needs root, "
            "bubblewrap, iproute2); tainted kubetune.io/real-pods=true:NoSchedule."
        ),
    ] = 0,
    build: Annotated[
        bool, typer.Option("--build/--no-build", help="Build missing binaries first.")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = 120.0,
) -> None:
    """Start the cluster (reusing a running one) and print `export KUBECONFIG=...`."""
    cluster = DevCluster(state_dir)
    try:
        with err.status("starting the dev cluster") as status:

            def progress(msg: str) -> None:
                err.log(msg)
                status.update(msg)

            def build_line(line: str) -> None:
                status.update(f"building: {line[:100]}")

            state = cluster.up(
                apiserver_port=apiserver_port,
                gpu_nodes=gpu_nodes,
                cpu_nodes=cpu_nodes,
                gpus_per_node=gpus_per_node,
                real_nodes=real_nodes,
                build=build,
                timeout=timeout,
                progress=progress,
                build_output=build_line,
            )
    except DevClusterError as exc:
        raise _fail(exc) from exc
    err.print(
        f"[green]cluster up[/] at {state.server} ({len(state.nodes)} fake nodes, "
        f"kubernetes {state.versions.get('kubernetes')}); logs in {cluster.logs_dir}"
    )
    for line in cluster.env_lines():
        out.print(line)


@cluster_app.command("down")
def down_cmd(state_dir: StateDirOpt = None) -> None:
    """Stop every process of the cluster and remove its state directory."""
    cluster = DevCluster(state_dir)
    if not cluster.state_dir.exists():
        err.print(f"no cluster in {cluster.state_dir}")
        return
    try:
        kueue = KueueRunner(cluster)
        if kueue.load_state() is not None:  # it would retry a vanished API server forever
            with err.status("stopping kueue"):
                kueue.down()
        with err.status("stopping the dev cluster"):
            stuck = cluster.down()
    except DevClusterError as exc:
        raise _fail(exc) from exc
    if stuck:
        raise _fail(DevClusterError(f"could not stop: {', '.join(stuck)}"))
    err.print(f"[green]cluster down[/], removed {cluster.state_dir}")


@cluster_app.command("env")
def env_cmd(state_dir: StateDirOpt = None) -> None:
    """Print the shell lines that point kubectl/helm/clients at the cluster."""
    cluster = DevCluster(state_dir)
    if not cluster.is_running():
        err.print(f"[yellow]warning:[/] no running cluster in {cluster.state_dir}")
    try:
        lines = cluster.env_lines()
    except DevClusterError as exc:
        raise _fail(exc) from exc
    for line in lines:
        out.print(line)


@cluster_app.command("status")
def status_cmd(
    state_dir: StateDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show processes, ports and nodes of the cluster; exit 1 when it is not running."""
    cluster = DevCluster(state_dir)
    st = cluster.status()
    if as_json:
        out.print(json.dumps(st, indent=2))
    elif not st.get("processes"):
        err.print(f"no cluster in {st['state_dir']}")
    else:
        colour = "green" if st["running"] else "red"
        out.print(
            f"[{colour}]{'running' if st['running'] else 'NOT running'}[/] "
            f"{st['server']}  kubeconfig={st['kubeconfig']}"
        )
        procs = Table("process", "pid", "alive", "RSS MiB", "log", title="processes")
        for p in st["processes"]:
            procs.add_row(p["name"], str(p["pid"]), str(p["alive"]), str(p["rss_mib"]), p["log"])
        out.print(procs)
        if st["nodes"]:
            nodes = Table("node", "pool", "ready", "nvidia.com/gpu", title="nodes")
            for n in st["nodes"]:
                nodes.add_row(n["name"], str(n["pool"]), str(n["ready"]), str(n["gpus"]))
            out.print(nodes)
    if not st.get("running"):
        raise typer.Exit(1)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout meanwhile (fd 1 too) to stderr: stdout is YAML."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def job_claims(spec: Any) -> list[str]:
    """The PVC claims a resolved FineTuneJob spec reads or writes (``pvc://<claim>/...``)."""
    from kubetune.api.locations import input_locations
    from kubetune.contract.uris import Scheme, parse_uri

    uris = [*input_locations(spec), spec.output.uri]
    claims = {parse_uri(u).name for u in uris if parse_uri(u).scheme is Scheme.PVC}
    return sorted(claims)


@app.command("seed")
def seed_cmd(
    manifest: Annotated[
        Path, typer.Option("-f", "--filename", exists=True, dir_okay=False, help="FineTuneJob.")
    ],
    namespace: Annotated[
        str | None,
        typer.Option(help="Namespace of the claims (default: the job's, else default)."),
    ] = None,
    size: Annotated[str, typer.Option(help="Capacity of each PersistentVolume.")] = "10Gi",
    state_dir: StateDirOpt = None,
) -> None:
    """Prepare a job's inputs on the real-pod nodes and print its PVs and PVCs (YAML)."""
    from kubetune.cli.run import _load_job, _seed_fixtures
    from kubetune.devcluster.nodeagent.claims import claim_manifests

    cluster = DevCluster(state_dir)
    pvc_root = cluster.node_agent_dir / "pvc"
    if not cluster.node_agent_dir.is_dir():
        raise _fail(
            DevClusterError(
                f"no real-pod nodes in {cluster.state_dir}: run "
                "`kubetune dev cluster up --real-nodes 2` first"
            )
        )
    resolved = _load_job(manifest)
    raw = next(
        d
        for d in yaml.safe_load_all(manifest.read_text())
        if (d or {}).get("kind") == "FineTuneJob"
    )
    ns = namespace or (raw.get("metadata") or {}).get("namespace") or "default"
    docs: list[dict[str, Any]] = []
    for claim in job_claims(resolved.spec):
        host_dir = pvc_root / claim
        host_dir.mkdir(parents=True, exist_ok=True)
        host_dir.chmod(0o777)  # the pods run as uid 1000; outputs are written there
        docs += claim_manifests(claim, ns, host_dir, size)
    with _stdout_to_stderr():  # libraries building the model print on stdout (DeepSpeed)
        _seed_fixtures(resolved, pvc_root)
    for path in pvc_root.rglob("*"):  # readable by the pods' uid (root wrote them)
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
    err.print(f"[green]seeded[/] {pvc_root} (claims: {', '.join(job_claims(resolved.spec))})")
    # plain text: rich markup must not touch YAML
    typer.echo(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": docs}, sort_keys=False))


if __name__ == "__main__":
    app()
