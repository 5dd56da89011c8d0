"""A node agent for the dev cluster whose pods really run (DESIGN.md, testing tier 4).

It registers Nodes (``kubetune-real-<i>``: cpu, memory, ephemeral-storage, pods and
``nvidia.com/gpu`` like the KWOK GPU nodes; label ``kubetune.io/node-pool=real``; taint
``kubetune.io/real-pods=true:NoSchedule``, so only pods that tolerate it land there), keeps them
Ready (status heartbeats and Leases), and runs every pod bound to them as a local sandboxed
process: the pod's env, its ConfigMap/Secret/downwardAPI/projected volumes written to files,
emptyDirs, one shared host directory per PVC claim (``<state>/pvc/<claimName>``), its own network
namespace with an IP on a bridge routed from the host, a hosts file resolving the headless
Service names of its peers, the termination message and exit code reported in the pod status,
and SIGTERM / grace period / SIGKILL on deletion. Pods reach the API server in-cluster as on a
real node: ``KUBERNETES_SERVICE_HOST=kubernetes.default.svc`` (a SAN of the serving cert) and
the other ``kubernetes`` Service variables, that name resolved by the hosts file to the bridge
gateway where the agent forwards port 443 to the API server, and the projected ServiceAccount
token volume (``kube-api-access-*``) the API server adds (:mod:`.apiproxy`).

Why written here, in Python, rather than built on virtual-kubelet: a virtual-kubelet provider
is Go code we would still have to write (the library gives node registration and the pod
informer, which is the small part), and it would add a Go module build to CI's cold start next
to the cluster binaries. What remains is process management and status reporting -- namespaces,
bubblewrap, files, signals -- which Python does well, with the same stdlib API client style as
the rest of the dev cluster, and which the trainer's own tooling (the project's virtualenv,
which stands in for the trainer image) runs from directly.

Needs root and ``bwrap`` (bubblewrap), ``ip`` (iproute2) and ``setpriv`` (util-linux).
Not emulated: resource limits (no cgroups: CPU and memory are not enforced, so OOMKilled is
never reported), images (every container runs the host's read-only filesystem with the agent's
virtualenv first on PATH, so a container needs an explicit command), probes, init containers,
container restarts, NetworkPolicies, and ``kubectl logs``/``exec`` (no kubelet API: a pod's
output is in ``<state>/logs/<namespace>_<pod>_<uid8>.log``).

Modules: :mod:`.config` (settings), :mod:`.kubeapi` (API client), :mod:`.nodes` (Node objects,
heartbeats, Leases), :mod:`.env` (environment), :mod:`.volumes` (volumes and mounts),
:mod:`.hosts` / :mod:`.peers` (hosts files), :mod:`.sandbox` (the bwrap command line),
:mod:`.network` (bridge, netns, veth), :mod:`.apiproxy` (in-cluster API access),
:mod:`.status` (pod status documents), :mod:`.pod` (one pod's life), :mod:`.agent` (the
loop), :mod:`.cleanup` (after a crash), :mod:`.launcher` (start and stop it as a dev cluster
process).
"""

from kubetune.devcluster.nodeagent.config import NODE_POOL, TAINT_KEY, AgentConfig

__all__ = ["NODE_POOL", "TAINT_KEY", "AgentConfig"]
