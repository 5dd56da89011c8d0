"""Hosts files: the headless Service names of a gang resolve inside each pod."""

from __future__ import annotations

from pathlib import Path

from kubetune.devcluster.nodeagent.hosts import HostEntry, hosts_file, resolv_conf
from kubetune.devcluster.nodeagent.peers import Peers

R0 = HostEntry("10.250.0.2", "job-0", "team", "job")
R1 = HostEntry("10.250.0.3", "job-1", "team", "job")
OTHER_NS = HostEntry("10.250.0.4", "job-0", "elsewhere", "job")
LONE = HostEntry("10.250.0.5", "validate", "team")


def lines(text: str) -> dict[str, str]:
    return {ln.split("\t")[0]: ln for ln in text.splitlines() if ln.startswith("10.")}


def test_pod_resolves_itself_and_its_subdomain_peers_only() -> None:
    text = hosts_file(R1, [R0, R1, OTHER_NS, LONE])
    assert "127.0.0.1\tlocalhost" in text
    got = lines(text)
    assert set(got) == {"10.250.0.2", "10.250.0.3"}
    # the rendezvous address the operator renders: <host>.<svc>.<ns>.svc
    assert got["10.250.0.2"].split("\t")[1:] == [
        "job-0.job.team.svc.cluster.local",
        "job-0.job.team.svc",
        "job-0.job",
    ]
    assert got["10.250.0.3"].split("\t")[-1] == "job-1"  # its own hostname (gloo uses it)


def test_pod_without_subdomain_has_only_its_hostname() -> None:
    assert lines(hosts_file(LONE, [R0, R1, LONE])) == {"10.250.0.5": "10.250.0.5\tvalidate"}


def test_resolv_conf_search_path() -> None:
    text = resolv_conf("team")
    assert "search team.svc.cluster.local svc.cluster.local cluster.local" in text


def test_peers_rewrite_files_in_place(tmp_path: Path) -> None:
    f0, f1 = tmp_path / "h0", tmp_path / "h1"
    f0.touch()
    f1.touch()
    inode = f0.stat().st_ino
    peers = Peers()
    peers.add("u0", R0, f0)
    assert "job-1" not in f0.read_text()
    peers.add("u1", R1, f1)
    assert "job-1.job.team.svc" in f0.read_text() and "job-0.job.team.svc" in f1.read_text()
    peers.remove("u1")
    assert "job-1" not in f0.read_text()
    assert f0.stat().st_ino == inode  # a bind mount of the file sees every update
