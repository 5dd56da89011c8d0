"""The pod's ``/etc/hosts`` and ``/etc/resolv.conf`` (pure functions).

There is no cluster DNS: the headless Service names a gang rendezvouses through
(``<hostname>.<subdomain>.<namespace>.svc[.cluster.local]``) resolve through each pod's hosts
file, which the agent rewrites in place (same inode: it is bind-mounted) whenever a pod of the
same subdomain gets or loses its IP; glibc reads the file on every lookup.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kubetune.devcluster.nodeagent.apiproxy import SERVICE_NAMES

CLUSTER_DOMAIN = "cluster.local"

_HEADER = """# Kubernetes-managed hosts file (kubetune node agent).
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
fe00::0\tip6-mcastprefix
fe00::1\tip6-allnodes
fe00::2\tip6-allrouters
"""


@dataclass(frozen=True)
class HostEntry:
    """A running pod as the hosts files see it."""

    ip: str
    hostname: str
    namespace: str
    subdomain: str | None = None

    def names(self, cluster_domain: str = CLUSTER_DOMAIN) -> list[str]:
        """Its DNS names through the headless Service (none without a subdomain)."""
        if not self.subdomain:
            return []
        base = f"{self.hostname}.{self.subdomain}.{self.namespace}.svc"
        return [f"{base}.{cluster_domain}", base, f"{self.hostname}.{self.subdomain}"]


def same_service(a: HostEntry, b: HostEntry) -> bool:
    return bool(a.subdomain) and a.subdomain == b.subdomain and a.namespace == b.namespace


def hosts_file(
    me: HostEntry,
    pods: Iterable[HostEntry],
    cluster_domain: str = CLUSTER_DOMAIN,
    api_ip: str | None = None,
) -> str:
    """``me``'s hosts file: localhost, its own names and hostname, the API server's
    ``kubernetes.default.svc`` names at ``api_ip`` (the agent's forwarder), then every other
    pod of its subdomain (sorted by hostname, so the text only changes when the set does)."""
    lines = [_HEADER.rstrip("\n"), "\t".join([me.ip, *me.names(cluster_domain), me.hostname])]
    if api_ip:
        names = [n for n in SERVICE_NAMES if not n.endswith(".cluster.local")]
        lines.append("\t".join([api_ip, f"kubernetes.default.svc.{cluster_domain}", *names]))
    peers = sorted(
        (p for p in pods if p != me and p.ip != me.ip and same_service(me, p)),
        key=lambda p: (p.hostname, p.ip),
    )
    lines += ["\t".join([p.ip, *p.names(cluster_domain)]) for p in peers]
    return "\n".join(lines) + "\n"


def resolv_conf(namespace: str, cluster_domain: str = CLUSTER_DOMAIN) -> str:
    """Search domains as a kubelet writes them; no nameserver (a lookup that the hosts file
    cannot answer fails at once on the pod's loopback instead of timing out)."""
    search = f"{namespace}.svc.{cluster_domain} svc.{cluster_domain} {cluster_domain}"
    return f"search {search}\nnameserver 127.0.0.1\noptions ndots:5 timeout:1 attempts:1\n"
