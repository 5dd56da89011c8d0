"""A real local Kubernetes control plane with KWOK fake GPU nodes, for tests and demos.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, KWOK and helm are built
from source at the versions pinned in ``data/versions.env`` (by ``data/build.sh``; both ship with
the package, so an installed kubetune builds them too) and cached outside the repository. Use
the CLI (``kubetune dev cluster up|down|env|status|build``) or :class:`DevCluster` directly.
"""

from kubetune.devcluster.cluster import ClusterState, DevCluster, default_state_dir
from kubetune.devcluster.versions import Binaries, DevClusterError, Versions

__all__ = [
    "Binaries",
    "ClusterState",
    "DevCluster",
    "DevClusterError",
    "Versions",
    "default_state_dir",
]
