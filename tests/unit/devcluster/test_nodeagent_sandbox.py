"""The bubblewrap command line of a real pod's container."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kubetune.devcluster.nodeagent.sandbox import (
    Identity,
    SandboxSpec,
    command,
    identity,
    root_ops,
)
from kubetune.devcluster.nodeagent.volumes import Mount


class FakeFs:
    """/bin -> usr/bin, /etc with two files, /usr, /var/run -> /run, /root, /tmp."""

    tree = {
        "/": ["bin", "etc", "root", "tmp", "usr", "var"],
        "/etc": ["hosts", "passwd"],
        "/var": ["lib", "run"],
    }
    links = {"/bin": "usr/bin", "/var/run": "/run"}

    def listdir(self, path: str) -> list[str]:
        return self.tree[path]

    def kind(self, path: str) -> str:
        if path in self.links:
            return "symlink"
        return "file" if path in ("/etc/hosts", "/etc/passwd") else "dir"

    def readlink(self, path: str) -> str:
        return self.links[path]

    def resolve(self, path: str) -> str:
        return "/run" + path[len("/var/run") :] if path.startswith("/var/run/") else path


def test_root_is_read_only_host_with_dirs_rebuilt_above_new_mount_points() -> None:
    ops = root_ops(["/etc/hosts", "/etc/kubetune"], FakeFs())
    assert ["--symlink", "usr/bin", "/bin"] in ops
    assert ["--ro-bind", "/usr", "/usr"] in ops and ["--ro-bind", "/var", "/var"] in ops
    # /etc gets a mount point the host lacks: rebuilt entry by entry, the target left out
    assert ["--dir", "/etc"] in ops and ["--ro-bind", "/etc/passwd", "/etc/passwd"] in ops
    assert ["--ro-bind", "/etc", "/etc"] not in ops
    assert not [op for op in ops if "/etc/hosts" in op]
    # private host places are never shown
    assert not [op for op in ops if "/root" in op or "/tmp" in op]


def spec(user: Identity, mounts: list[Mount]) -> SandboxSpec:
    return SandboxSpec(
        netns="kt0-abcd",
        hostname="job-0",
        argv=["python", "-m", "x"],
        mounts=mounts,
        hosts_file="/s/hosts",
        resolv_file="/s/resolv",
        hostname_file="/s/hostname",
        termination_log="/s/termlog",
        termination_log_path="/dev/termination-log",
        working_dir="/",
        user=user,
        image_paths=["/root/.pyenv/v", "/work/venv"],
    )


def test_command_line() -> None:
    mounts = [
        Mount("/mnt/pvc/ckpt", Path("/state/pvc/ckpt"), False),
        Mount("/dev/shm", None, False, 1024),
        Mount("/var/run/creds", Path("/s/creds"), True),
    ]
    argv = command(spec(Identity(1000, 1000, (1000,)), mounts), FakeFs(), info_fd=5)
    text = " ".join(argv)
    assert argv[:5] == ["ip", "netns", "exec", "kt0-abcd", "bwrap"]
    for flag in (
        "--die-with-parent",
        "--unshare-pid",
        "--as-pid-1",
        "--info-fd 5",
        "--hostname job-0",
        "--bind /state/pvc/ckpt /mnt/pvc/ckpt",
        "--size 1024 --tmpfs /dev/shm",
        "--ro-bind /s/hosts /etc/hosts",
        "--bind /s/termlog /dev/termination-log",
        "--perms 0755 --dir /root --perms 0755 --dir /root/.pyenv",
        "--ro-bind /root/.pyenv/v /root/.pyenv/v",
        "--tmpfs /tmp",
    ):
        assert flag in text, flag
    assert "/work/venv" not in text  # under a visible directory already
    # through the host's /var/run -> /run link, the mount lands where the link leads
    assert "--ro-bind /s/creds /run/creds" in text
    assert argv.index("--dev") < argv.index("--bind")  # volumes on top of /dev
    tail = argv[argv.index("--") + 1 :]
    assert tail[0] == "setpriv" and "--reuid=1000" in tail and "--groups=1000" in tail
    assert "--no-new-privs" in tail and tail[-3:] == ["python", "-m", "x"]


def test_an_image_under_a_pod_volume_is_bound_on_top_of_it() -> None:
    """A checkout under /tmp (CI clones there) with the pod's emptyDir on /tmp: the
    virtualenv standing in for the image must still be there, so it is bound after."""
    mounts = [Mount("/tmp", Path("/state/pod/tmp"), False)]
    base = spec(Identity(1000, 1000, (1000,)), mounts)
    argv = command(replace(base, image_paths=["/tmp/clone/.venv"]), FakeFs())
    text = " ".join(argv)
    tmp_at = text.index("--bind /state/pod/tmp /tmp")
    image_at = text.index("--ro-bind /tmp/clone/.venv /tmp/clone/.venv")
    assert tmp_at < image_at
    # Without a /tmp volume the sandbox's own /tmp tmpfs covers it the same way.
    argv = command(replace(base, mounts=[], image_paths=["/tmp/clone/.venv"]), FakeFs())
    text = " ".join(argv)
    assert text.index("--tmpfs /tmp") < text.index("--ro-bind /tmp/clone/.venv")


def test_root_user_keeps_no_capabilities() -> None:
    argv = command(spec(Identity(), []), FakeFs())
    assert argv[argv.index("--") - 2 : argv.index("--") + 1] == ["--cap-drop", "ALL", "--"]
    assert "setpriv" not in argv


def test_identity_from_security_contexts() -> None:
    pod = {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000, "supplementalGroups": [3]}
    assert identity(pod, {}) == Identity(1000, 1000, (3, 2000))
    assert identity(pod, {"runAsUser": 1001}).uid == 1001
    assert identity({}, {}) == Identity(0, 0, ())


def test_the_image_includes_the_project_sources_of_an_editable_install() -> None:
    """setuptools' editable installs map packages with an import hook, not sys.path: the
    source roots must be bound explicitly (a checkout under /tmp is hidden otherwise)."""
    import importlib.util

    from kubetune.devcluster.nodeagent.config import PROJECT_PACKAGES, default_image_paths

    paths = default_image_paths()
    for name in PROJECT_PACKAGES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.submodule_search_locations
        location = str(Path(next(iter(spec.submodule_search_locations))).resolve())
        assert any(location == p or location.startswith(p + "/") for p in paths), name
