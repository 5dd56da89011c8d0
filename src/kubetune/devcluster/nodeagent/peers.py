"""The pods that hold an IP on this agent, and their hosts files kept current."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from kubetune.devcluster.nodeagent.hosts import HostEntry, hosts_file, same_service


def write_in_place(path: Path, text: str) -> None:
    """Rewrite ``path`` keeping its inode (a bind mount of it sees the new text)."""
    with path.open("r+" if path.exists() else "w") as fh:
        fh.seek(0)
        fh.write(text)
        fh.truncate()


@dataclass(frozen=True)
class _Peer:
    entry: HostEntry
    hosts_path: Path


class Peers:
    """uid -> (hosts entry, hosts file); adding or removing a pod rewrites the hosts files of
    the pods of its subdomain."""

    def __init__(self, api_ip: str | None = None) -> None:
        #: where the pods reach the API server (``kubernetes.default.svc``)
        self.api_ip = api_ip
        self._peers: dict[str, _Peer] = {}
        self._lock = threading.Lock()

    def _rewrite(self, entry: HostEntry) -> None:
        everyone = [p.entry for p in self._peers.values()]
        for peer in self._peers.values():
            if peer.entry == entry or same_service(peer.entry, entry):
                write_in_place(
                    peer.hosts_path, hosts_file(peer.entry, everyone, api_ip=self.api_ip)
                )

    def add(self, uid: str, entry: HostEntry, hosts_path: Path) -> None:
        with self._lock:
            self._peers[uid] = _Peer(entry, hosts_path)
            self._rewrite(entry)

    def remove(self, uid: str) -> None:
        with self._lock:
            peer = self._peers.pop(uid, None)
            if peer is not None:
                self._rewrite(peer.entry)
