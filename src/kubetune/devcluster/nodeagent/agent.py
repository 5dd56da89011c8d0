"""The agent's main loop: nodes kept Ready, pods bound to them watched and run, and on stop
nothing left behind (processes, network namespaces, veths, the bridge, Node objects)."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
from typing import Any

from kubetune.devcluster.nodeagent import apiproxy, network, status
from kubetune.devcluster.nodeagent.config import AgentConfig
from kubetune.devcluster.nodeagent.context import AgentContext, find_tools
from kubetune.devcluster.nodeagent.kubeapi import ApiError, KubeApi
from kubetune.devcluster.nodeagent.nodes import NodeKeeper, resources
from kubetune.devcluster.nodeagent.peers import Peers
from kubetune.devcluster.nodeagent.pod import PodRunner, pod_stem

JSON = dict[str, Any]
log = logging.getLogger(__name__)
#: how long each pod gets to exit when the agent stops
STOP_GRACE_SECONDS = 2.0


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.stopping = threading.Event()
        self.runners: dict[str, PodRunner] = {}
        self.done: set[str] = set()
        self._lock = threading.Lock()
        self.ctx: AgentContext | None = None
        self.keeper: NodeKeeper | None = None
        self.forwarder: apiproxy.ApiForwarder | None = None

    # -- start ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Claim the network, register the nodes, start heartbeats and pod watches."""
        cfg = self.config
        tools = find_tools()
        for sub in ("pods", "pvc", "logs"):
            (cfg.state_dir / sub).mkdir(parents=True, exist_ok=True)
        (cfg.state_dir / "pvc").chmod(0o755)
        api = KubeApi(cfg.kubeconfig, cfg.state_dir / "credentials")
        net = network.PodNetwork.claim()
        cfg.resources_file.write_text(json.dumps({"bridge_index": net.index}))
        self.ctx = AgentContext(
            cfg, api, net, tools, peers=Peers(api_ip=net.gateway), allocatable=resources(cfg)
        )
        # pods reach the API server at <gateway>:443 (kubernetes.default.svc in their hosts)
        self.forwarder = apiproxy.ApiForwarder(
            (net.gateway, apiproxy.SERVICE_PORT), apiproxy.upstream_of(api.server)
        ).start()
        self.keeper = NodeKeeper(api, cfg, self.ctx.host_ip)
        self.keeper.register()
        log.info("nodes %s ready on bridge %s (%s)", cfg.node_names, net.bridge, net.subnet)
        threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True).start()
        for node in cfg.node_names:
            threading.Thread(
                target=self._watch, args=(node,), name=f"watch-{node}", daemon=True
            ).start()

    def _heartbeats(self) -> None:
        assert self.keeper is not None
        while not self.stopping.wait(self.config.heartbeat_seconds):
            try:
                gone = self.keeper.heartbeat()
            except Exception:
                log.exception("heartbeat failed")
                continue
            for node in gone:
                log.warning("node %s was deleted: killing its pods", node)
                with self._lock:
                    lost = [r for r in self.runners.values() if r.node == node]
                for runner in lost:
                    runner.kill()

    def _watch(self, node: str) -> None:
        """List then watch the pods bound to ``node``; re-list whenever the watch ends."""
        assert self.ctx is not None
        api = self.ctx.api
        selector = {"fieldSelector": f"spec.nodeName={node}"}
        while not self.stopping.is_set() and node in (self.keeper.live if self.keeper else ()):
            try:
                listing = api.get(f"/api/v1/pods?fieldSelector=spec.nodeName%3D{node}")
                for pod in listing.get("items") or []:
                    self.handle("ADDED", pod)
                version = listing["metadata"]["resourceVersion"]
                for event in api.watch(
                    "/api/v1/pods",
                    {**selector, "resourceVersion": version, "allowWatchBookmarks": "true"},
                ):
                    if self.stopping.is_set():
                        return
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        self.handle(str(event["type"]), event["object"])
            except (ApiError, OSError, ValueError) as exc:
                log.info("pod watch of %s restarts: %s", node, exc)
                self.stopping.wait(1.0)

    # -- events ----------------------------------------------------------------------------------
    def handle(self, kind: str, pod: JSON) -> None:
        assert self.ctx is not None
        meta = pod["metadata"]
        uid = str(meta["uid"])
        deleting = meta.get("deletionTimestamp") is not None
        with self._lock:
            runner = self.runners.get(uid)
            if runner is not None:
                if kind == "DELETED":
                    runner.kill()
                elif deleting:
                    runner.request_delete(float(meta.get("deletionGracePeriodSeconds") or 0))
                return
            if uid in self.done or status.is_terminal(pod):
                # a pod that ended on its own keeps its directory (like emptyDir volumes)
                # until its object goes
                if deleting or kind == "DELETED":
                    shutil.rmtree(self.ctx.config.pods_dir / pod_stem(pod), ignore_errors=True)
                if deleting and kind != "DELETED":
                    self._delete(pod)
                return
            if kind == "DELETED" or self.stopping.is_set():
                return
            if (pod.get("status") or {}).get("phase") == "Running":
                # running before this agent started: its process died with the old agent
                self._lost(pod)
                self.done.add(uid)
                return
            runner = PodRunner(self.ctx, pod)
            self.runners[uid] = runner
        if deleting:
            runner.request_delete(0)
        runner.start()
        threading.Thread(target=self._reap, args=(runner,), daemon=True).start()

    def _reap(self, runner: PodRunner) -> None:
        runner.join()
        if runner.going:  # a delete that came while the pod was already ending
            shutil.rmtree(runner.dir, ignore_errors=True)
        with self._lock:
            self.runners.pop(runner.uid, None)
            self.done.add(runner.uid)

    def _delete(self, pod: JSON) -> None:
        assert self.ctx is not None
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": pod["metadata"]["uid"]},
        }
        with contextlib.suppress(ApiError):
            self.ctx.api.delete(self.ctx.pod_path(pod), options)

    def _lost(self, pod: JSON) -> None:
        assert self.ctx is not None
        now = status.now()
        end = status.Exit(
            137,
            "ContainerStatusUnknown",
            "the node agent restarted; the container is gone",
            now,
            now,
        )
        body = status.terminated_status(pod, self.ctx.host_ip, None, now, "", end)
        with contextlib.suppress(ApiError):
            self.ctx.api.merge_patch(self.ctx.pod_path(pod, "/status"), {"status": body})

    # -- stop ------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Kill every pod, remove the network and the Node objects."""
        self.stopping.set()
        with self._lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner.kill(STOP_GRACE_SECONDS)
        for runner in runners:
            runner.join(timeout=STOP_GRACE_SECONDS + 10)
        if self.keeper is not None:
            self.keeper.unregister()
        if self.forwarder is not None:
            self.forwarder.stop()
        if self.ctx is not None:
            network.destroy(self.ctx.network.index)
        with contextlib.suppress(OSError):
            self.config.resources_file.unlink()
