"""The container's sandbox: a bubblewrap command line (built by pure functions).

The host filesystem is the "image" (the project's virtualenv runs the trainer), read-only:
each top-level directory is bound read-only into an empty root, except the host's private or
per-pod places (``/tmp``, ``/run``, ``/home``, ``/root``, ``/mnt``, ...). A directory that
must hold a mount point the host lacks (``/etc/kubetune``) is rebuilt one level down instead:
an empty directory whose entries are bound one by one. On top: ``/dev`` and ``/proc`` of the
sandbox, the volume mounts, the pod's hosts / resolv.conf files and ``/dev/termination-log``.

The process runs in the pod's network namespace (``ip netns exec``), in new PID, IPC and UTS
namespaces, as PID 1 (like a container without an init: SIGTERM reaches the entrypoint, and
SIGKILL of it ends the namespace), dies with the agent, and drops to the pod's user and groups
with ``setpriv`` (all capabilities dropped, ``no_new_privs``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Protocol

from kubetune.devcluster.nodeagent.volumes import Mount

#: top-level host directories never shown to a container
HIDDEN = frozenset(
    {"proc", "dev", "tmp", "run", "home", "root", "mnt", "media", "srv", "boot", "lost+found"}
)
HOSTS_PATH = "/etc/hosts"
RESOLV_PATH = "/etc/resolv.conf"
HOSTNAME_PATH = "/etc/hostname"


class FsView(Protocol):
    """What the root plan needs to know of the host filesystem."""

    def listdir(self, path: str) -> list[str]: ...

    def kind(self, path: str) -> str:
        """``dir``, ``symlink``, ``file`` or ``other``."""
        ...

    def readlink(self, path: str) -> str: ...

    def resolve(self, path: str) -> str:
        """``path`` with the symlinks among its existing ancestors resolved."""
        ...


class HostFs:
    """:class:`FsView` of the real host."""

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def kind(self, path: str) -> str:
        if os.path.islink(path):
            return "symlink"
        if os.path.isdir(path):
            return "dir"
        return "file" if os.path.isfile(path) else "other"

    def readlink(self, path: str) -> str:
        return os.readlink(path)

    def resolve(self, path: str) -> str:
        return os.path.realpath(path)


def _is_under(path: str, parent: str) -> bool:
    return path != parent and path.startswith(parent.rstrip("/") + "/")


def root_ops(targets: Iterable[str], fs: FsView) -> list[list[str]]:
    """bwrap options that make the read-only host root, leaving every ``target`` (a mount
    point to come) creatable: directories above a target are rebuilt, not bound."""
    wanted = sorted({str(PurePosixPath(t)) for t in targets})
    ops: list[list[str]] = []

    def expose(path: str) -> None:
        kind = fs.kind(path)
        if kind == "symlink":
            ops.append(["--symlink", fs.readlink(path), path])
        elif kind == "dir" and any(_is_under(t, path) for t in wanted):
            ops.append(["--dir", path])
            for name in fs.listdir(path):
                child = f"{path}/{name}"
                if child not in wanted:
                    expose(child)
        elif kind in ("dir", "file"):
            ops.append(["--ro-bind", path, path])

    for name in fs.listdir("/"):
        if name not in HIDDEN and f"/{name}" not in wanted:
            expose(f"/{name}")
    return ops


@dataclass(frozen=True)
class Identity:
    """Who the container runs as (pod and container ``securityContext``)."""

    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()


def identity(pod_security: dict[str, object], container_security: dict[str, object]) -> Identity:
    def pick(key: str) -> int | None:
        value = container_security.get(key, pod_security.get(key))
        return None if value is None else int(str(value))

    uid = pick("runAsUser") or 0
    gid = pick("runAsGroup")
    groups = [int(str(g)) for g in pod_security.get("supplementalGroups") or []]  # type: ignore[attr-defined]
    fs_group = pod_security.get("fsGroup")
    if fs_group is not None:
        groups.append(int(str(fs_group)))
    return Identity(uid, gid if gid is not None else 0, tuple(dict.fromkeys(groups)))


@dataclass(frozen=True)
class SandboxSpec:
    """Everything the command line of one container depends on."""

    netns: str
    hostname: str
    argv: Sequence[str]
    mounts: Sequence[Mount]
    hosts_file: str
    resolv_file: str
    hostname_file: str
    termination_log: str
    termination_log_path: str
    working_dir: str
    user: Identity
    #: host directories bound read-only at the same place (the "image"), hidden or not
    image_paths: Sequence[str] = ()
    bwrap: str = "bwrap"
    ip: str = "ip"
    setpriv: str = "setpriv"


def parent_ops(path: str, made: set[str]) -> list[list[str]]:
    """Create ``path``'s missing parents world-traversable (bwrap would otherwise copy modes
    such as ``/root``'s 0700 or a private temporary directory's)."""
    parts = PurePosixPath(path).parts[1:]
    ops: list[list[str]] = []
    for depth in range(1, len(parts)):
        parent = "/" + "/".join(parts[:depth])
        if parent not in made:
            made.add(parent)
            ops.append(["--perms", "0755", "--dir", parent])
    return ops


def mount_ops(mounts: Iterable[Mount], made: set[str] | None = None) -> list[list[str]]:
    made = set() if made is None else made
    ops: list[list[str]] = []
    for m in mounts:
        ops += parent_ops(m.target, made)
        if m.source is None:
            size = ["--size", str(m.size_bytes)] if m.size_bytes else []
            ops.append([*size, "--tmpfs", m.target])
        else:
            ops.append(["--ro-bind" if m.read_only else "--bind", str(m.source), m.target])
    return ops


def command(spec: SandboxSpec, fs: FsView, info_fd: int | None = None) -> list[str]:
    """The full command line: ``ip netns exec NS bwrap ... -- setpriv ... ARGV``."""
    # the sandbox has the host's symlinks (/var/run -> /run): mount where they lead
    mounts = [replace(m, target=fs.resolve(m.target)) for m in spec.mounts]
    files = [HOSTS_PATH, RESOLV_PATH, HOSTNAME_PATH]
    targets = [*files, *(m.target for m in mounts)]
    argv = [spec.ip, "netns", "exec", spec.netns, spec.bwrap]
    argv += [
        "--die-with-parent",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--as-pid-1",
        "--hostname",
        spec.hostname,
    ]
    if info_fd is not None:
        argv += ["--info-fd", str(info_fd)]
    for op in root_ops(targets, fs):
        argv += op
    # The "image" (host directories bound at the same place): under a hidden directory it
    # is bound now; where a pod volume or the sandbox's /tmp covers it (a checkout under
    # /tmp, with the pod's emptyDir on /tmp), on top of that mount, below.
    covering = [m.target for m in mounts]
    if "/tmp" not in covering:
        covering.append("/tmp")
    covered = [p for p in spec.image_paths if any(_is_under(p, t) for t in covering)]
    made: set[str] = set()
    for path in spec.image_paths:
        parts = PurePosixPath(path).parts[1:]
        if parts and parts[0] in HIDDEN and path not in covered:
            for op in [*parent_ops(path, made), ["--ro-bind", path, path]]:
                argv += op
    argv += ["--dev", "/dev", "--proc", "/proc"]
    if not any(m.target == "/tmp" for m in mounts):
        argv += ["--tmpfs", "/tmp"]
    for op in mount_ops(mounts, made):
        argv += op
    for path in covered:
        for op in [*parent_ops(path, made), ["--ro-bind", path, path]]:
            argv += op
    argv += [
        "--ro-bind",
        spec.hosts_file,
        HOSTS_PATH,
        "--ro-bind",
        spec.resolv_file,
        RESOLV_PATH,
        "--ro-bind",
        spec.hostname_file,
        HOSTNAME_PATH,
        "--bind",
        spec.termination_log,
        spec.termination_log_path,
        "--chdir",
        spec.working_dir,
    ]
    user = spec.user
    if user.uid == 0:
        argv += ["--cap-drop", "ALL", "--", *spec.argv]
        return argv
    groups = ",".join(str(g) for g in user.groups)
    argv += [
        "--",
        spec.setpriv,
        f"--reuid={user.uid}",
        f"--regid={user.gid}",
        f"--groups={groups}" if groups else "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
        *spec.argv,
    ]
    return argv
