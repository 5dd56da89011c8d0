"""Build the operator and trainer images as OCI archives, without a docker engine.

    python images/build.py [operator|trainer|all]   # dist/images/kubetune-<name>-<version>.oci.tar
    python images/build.py lock [operator|trainer|all] [--upgrade]

Each image is one layer: a Debian bookworm root filesystem made by ``mmdebstrap``
(``essential`` variant plus python3 3.11 and CA certificates), into which
``install_venv.py`` (the same script the Dockerfiles run) installs the locked dependencies
and the project wheel into ``/opt/kubetune`` and adds the non-root user (uid/gid 1000).
``umoci`` turns the tarball into an OCI image (entrypoint, env, user, labels), which is
written as an OCI archive (a tar of the OCI layout; ``podman load``, ``skopeo copy
oci-archive:...``, ``docker load`` (Docker 25+) and ``ctr images import`` read it).

Reproducible: ``SOURCE_DATE_EPOCH`` (default: the commit time of HEAD) sets every mtime
(clamped), the image's ``created`` time and the ``.pyc`` mode (hash-based); tar members
are sorted. Two builds of one checkout against the same Debian mirror state and lock are
bit-for-bit identical (``KUBETUNE_DEBIAN_MIRROR`` may name a snapshot.debian.org URL).

Needs: mmdebstrap, umoci (Debian packages), and pip (for the wheelhouse). Caches: the
downloaded .debs and wheels under ``.cache/images`` (warm builds download nothing).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES_DIR = REPO / "images"
DEFAULT_OUT = REPO / "dist" / "images"
DEFAULT_CACHE = REPO / ".cache" / "images"

SUITE = "bookworm"
PYTHON_VERSION = "3.11"  # bookworm's python3; the locks are resolved for it
ARCH = "amd64"
LOCK_PLATFORM = "x86_64-manylinux_2_36"  # bookworm's glibc
#: pip's platform tags for a wheel that runs on bookworm (glibc 2.36, x86_64).
PIP_PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
DEFAULT_SOURCE = "https://github.com/kubetune/kubetune"

VENV = "/opt/kubetune"
USER = "kubetune"
UID = GID = 1000  # runAsUser/runAsGroup of every pod (kubetune_operator/settings.py)
HOME = f"/home/{USER}"  # an emptyDir in every pod (kubetune_operator/render/common.py)
#: What the project wheel is built from (the Dockerfiles COPY the same).
PROJECT_FILES = ("pyproject.toml", "README.md", "src", "operator", "trainer")
#: Left out of the root filesystem (as in Debian's slim images); copyright files stay.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/lintian/*",
)
# python3-pip-whl: pip for the install, purged afterwards. libstdc++6: C++ extension
# modules link against it (google-re2 of cel-python; torch, numpy, pyarrow).
BASE_PACKAGES = ("ca-certificates", "python3", "python3-pip-whl", "libstdc++6")
#: Merged /usr as debootstrap makes it, with usr-is-merged instead of usrmerge (which
#: would pull in all of perl).
MERGED_USR_HOOKS = "/usr/share/mmdebstrap/hooks/merged-usr"


@dataclass(frozen=True)
class ImageSpec:
    """One image: its extra of pyproject.toml, Debian packages and OCI configuration."""

    name: str
    extra: str
    description: str
    entrypoint: tuple[str, ...]
    ports: tuple[int, ...]
    packages: tuple[str, ...] = ()
    lock_inputs: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def lock(self) -> Path:
        return IMAGES_DIR / f"{self.name}.lock.txt"

    def archive_name(self, version: str) -> str:
        return f"kubetune-{self.name}-{version}.oci.tar"

    def report_name(self, version: str) -> str:
        return f"kubetune-{self.name}-{version}.json"


COMMON_ENV = {
    "PATH": f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "VIRTUAL_ENV": VENV,
    "HOME": HOME,
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
    # the root filesystem is read-only in the pods; .pyc files are precompiled
    "PYTHONDONTWRITEBYTECODE": "1",
}

IMAGES: dict[str, ImageSpec] = {
    "operator": ImageSpec(
        name="operator",
        extra="operator",
        description="The kubetune FineTuneJob operator (kopf); no torch.",
        entrypoint=("kubetune", "operator", "run"),
        ports=(8080,),
    ),
    "trainer": ImageSpec(
        name="trainer",
        extra="trainer",
        description="The kubetune trainer (torch, CUDA wheels from PyPI): every method "
        "under torchrun.",
        entrypoint=("python", "-m", "kubetune_trainer"),
        ports=(9400, 29400),
        # libquadmath0: torch's bundled libgfortran needs it. rdma-core's user space: NCCL
        # loads libibverbs at run time for InfiniBand/RoCE (else it falls back to TCP).
        packages=("libquadmath0", "libibverbs1", "librdmacm1", "ibverbs-providers"),
        lock_inputs=("images/trainer.in",),
        env={"HF_HUB_OFFLINE": "1"},
    ),
}


# ----------------------------------------------------------------------------- context


def run(command: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    print("+", shlex.join(str(c) for c in command), file=sys.stderr, flush=True)
    return subprocess.run([str(c) for c in command], check=True, text=True, **kwargs)  # type: ignore[call-overload,no-any-return]


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()


@dataclass(frozen=True)
class BuildContext:
    version: str
    revision: str
    source_date_epoch: int
    source: str

    @property
    def created(self) -> str:
        return datetime.fromtimestamp(self.source_date_epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    @classmethod
    def detect(cls) -> BuildContext:
        version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
        try:
            revision = git("rev-parse", "HEAD")
            if git("status", "--porcelain", "--", *PROJECT_FILES, "images"):
                revision += "-dirty"
            commit_time = int(git("log", "-1", "--format=%ct"))
        except (subprocess.CalledProcessError, FileNotFoundError, ValueError):
            revision, commit_time = "unknown", 0
        try:
            remote = git("config", "--get", "remote.origin.url")
        except (subprocess.CalledProcessError, FileNotFoundError):
            remote = ""
        epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or commit_time)
        if not remote.startswith(("https://", "http://", "ssh://", "git@")):
            remote = ""  # a clone of a local path: its path means nothing in an image label
        source = os.environ.get("KUBETUNE_IMAGE_SOURCE") or remote or DEFAULT_SOURCE
        return cls(version, revision, epoch, source)

    def labels(self, spec: ImageSpec) -> dict[str, str]:
        return {
            "org.opencontainers.image.title": f"kubetune-{spec.name}",
            "org.opencontainers.image.description": spec.description,
            "org.opencontainers.image.source": self.source,
            "org.opencontainers.image.version": self.version,
            "org.opencontainers.image.revision": self.revision,
            "org.opencontainers.image.created": self.created,
            "org.opencontainers.image.licenses": "Apache-2.0",
            "org.opencontainers.image.base.name": f"debian:{SUITE}",
        }

    def env(self, spec: ImageSpec) -> dict[str, str]:
        env = {**COMMON_ENV, **spec.env}
        if spec.name == "trainer":
            env["KUBETUNE_GIT_REVISION"] = self.revision  # recorded in the lineage
        return env


class Timer:
    def __init__(self) -> None:
        self.steps: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            yield
        finally:
            self.steps[name] = round(time.monotonic() - start, 1)


# ----------------------------------------------------------------------------- locks


def lock(spec: ImageSpec, upgrade: bool = False) -> None:
    """Resolve ``kubetune[<extra>]`` (+ the image's extra inputs) for bookworm's Python on
    x86_64, pinned with hashes, into ``images/<name>.lock.txt``."""
    inputs = ["pyproject.toml", *spec.lock_inputs]
    uv = shutil.which("uv")
    if uv:
        command = [
            uv, "pip", "compile", *inputs, "--extra", spec.extra, "--generate-hashes",
            "--python-version", PYTHON_VERSION, "--python-platform", LOCK_PLATFORM,
            "--custom-compile-command", f"python images/build.py lock {spec.name}", "--quiet",
            "--output-file", str(spec.lock.relative_to(REPO)),
        ]  # fmt: skip
    elif shutil.which("pip-compile"):
        if sys.version_info[:2] != (3, 11) or sys.platform != "linux":
            sys.exit("pip-compile resolves for this interpreter: run it under Python 3.11 on Linux")
        command = [
            "pip-compile", *inputs, "--extra", spec.extra, "--generate-hashes", "--allow-unsafe",
            "--strip-extras", "--output-file", str(spec.lock.relative_to(REPO)),
        ]  # fmt: skip
    else:
        sys.exit("lock: needs `uv` (or pip-tools' `pip-compile`) on PATH")
    if upgrade:
        command.append("--upgrade")
    run(command, cwd=REPO)


PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock_file: Path) -> dict[str, str]:
    return {normalize(n): v for n, v in PIN.findall(lock_file.read_text())}


def dist_pin(filename: str) -> tuple[str, str]:
    """``(normalized name, version)`` of a wheel or sdist file name."""
    stem = filename.removesuffix(".whl").removesuffix(".tar.gz").removesuffix(".zip")
    name, _, rest = stem.partition("-")
    if filename.endswith(".whl"):
        version = rest.split("-", 1)[0]
    else:  # sdist: <name>-<version>, the name may contain '-' in old sdists
        name, _, version = stem.rpartition("-")
    return normalize(name), version


# ----------------------------------------------------------------------------- steps


def inputs_fingerprint(spec: ImageSpec) -> str:
    """sha256 over everything an image is built from in this checkout (project files, the
    lock, the build scripts): equal fingerprints, equal images (given the same Debian
    mirror state)."""
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", *PROJECT_FILES)
    files = sorted(set(filter(None, listed.split("\0"))))
    files += [
        str(path.relative_to(REPO))
        for path in (IMAGES_DIR / "build.py", IMAGES_DIR / "install_venv.py", spec.lock)
    ]
    files += list(spec.lock_inputs)
    digest = hashlib.sha256()
    for rel in files:
        path = REPO / rel
        if path.is_file():
            digest.update(f"{rel}\0{len(path.read_bytes())}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def project_wheel(ctx: BuildContext, work: Path, env: Mapping[str, str]) -> Path:
    """``kubetune-<version>-py3-none-any.whl`` built from a clean copy of the checkout's
    tracked (and new, not ignored) files: a stale ``build/`` cannot leak into it."""
    src = work / "src"
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", *PROJECT_FILES)
    for rel in sorted(set(filter(None, listed.split("\0")))):
        source = REPO / rel
        if source.is_file():
            target = src / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    out = work / "project"
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", out, src], env=env)
    (wheel,) = out.glob("kubetune-*.whl")
    return wheel


def wheelhouse(spec: ImageSpec, cache: Path, env: Mapping[str, str]) -> Path:
    """Every file of the lock, hash-checked, in ``<cache>/wheels/<image>`` (only those)."""
    house = cache / "wheels" / spec.name
    house.mkdir(parents=True, exist_ok=True)
    platform_args = [a for p in PIP_PLATFORMS for a in ("--platform", p)]
    download = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-cache-dir", "--no-deps",
        "--require-hashes", "--python-version", PYTHON_VERSION, "--implementation", "cp",
        "--abi", "cp311", "--abi", "abi3", "--abi", "none", *platform_args,
        "-r", spec.lock, "-d", house,
    ]  # fmt: skip
    run(download, env={**env, "PIP_FIND_LINKS": ""})
    wanted = pins(spec.lock)
    for path in house.iterdir():
        name, version = dist_pin(path.name)
        if wanted.get(name) != version:
            path.unlink()  # an older pin's file
    missing = sorted(set(wanted) - {dist_pin(p.name)[0] for p in house.iterdir()})
    if missing:
        sys.exit(f"wheelhouse: pip downloaded nothing for {missing}")
    return house


def mirrors() -> list[str]:
    debian = os.environ.get("KUBETUNE_DEBIAN_MIRROR", DEFAULT_MIRROR)
    security = os.environ.get("KUBETUNE_DEBIAN_SECURITY_MIRROR", DEFAULT_SECURITY_MIRROR)
    return [
        f"deb {debian} {SUITE} main",
        f"deb {debian} {SUITE}-updates main",
        f"deb {security} {SUITE}-security main",
    ]


def rootfs(
    spec: ImageSpec, ctx: BuildContext, wheels: Path, project: Path, cache: Path, out: Path
) -> None:
    """The root filesystem as a tarball (mmdebstrap, then install_venv.py in the chroot)."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    stage = out.parent / "stage"
    stage.mkdir()
    for path in (*wheels.iterdir(), project, IMAGES_DIR / "install_venv.py", spec.lock):
        if path.stat().st_dev == stage.stat().st_dev:
            os.link(path, stage / path.name)  # the wheelhouse can be GBs: no copy
        else:
            shutil.copy2(path, stage / path.name)
    inside = "/tmp/kubetune-install"
    q = shlex.quote
    chroot_env = [
        "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "HOME=/root",
        f"SOURCE_DATE_EPOCH={ctx.source_date_epoch}", "DS_BUILD_OPS=0",
    ]  # fmt: skip
    install = [
        "chroot", '"$1"', *map(q, chroot_env), "python3", f"{inside}/install_venv.py",
        "--lock", f"{inside}/{spec.lock.name}", "--wheels", inside,
        "--user", USER, "--uid", str(UID), "--gid", str(GID),
    ]  # fmt: skip
    command = [
        "mmdebstrap", "--variant=essential", "--format=tar", "--skip=output/dev",
        "--architectures", ARCH, "--include", ",".join((*BASE_PACKAGES, *spec.packages)),
        *(f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES),
        "--aptopt=Acquire::Retries 3", f"--hook-dir={MERGED_USR_HOOKS}",
        # the .deb cache (mmdebstrap's documented recipe)
        "--skip=essential/unlink",
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
        f"--setup-hook=sync-in {q(str(debs))} /var/cache/apt/archives/",
        f"--customize-hook=sync-out /var/cache/apt/archives {q(str(debs))}",
        f'--customize-hook=mkdir -p "$1"{inside}',
        f"--customize-hook=sync-in {q(str(stage))} {inside}",
        "--customize-hook=" + " ".join(install),
        '--customize-hook=chroot "$1" dpkg --purge python3-pip-whl',
        # host-specific files (the runtime provides both)
        '--customize-hook=rm -f "$1"/etc/resolv.conf "$1"/etc/hostname',
        SUITE, out, *mirrors(),
    ]  # fmt: skip
    run(command, env={**os.environ, "SOURCE_DATE_EPOCH": str(ctx.source_date_epoch)})
    shutil.rmtree(stage)
    # An empty /dev (mmdebstrap's device nodes are left out: the runtime provides /dev, and
    # rootless unpacking cannot create them), so the runtime can mount over it.
    with tarfile.open(out, "a", format=tarfile.PAX_FORMAT) as tar:
        dev = tarfile.TarInfo("./dev")
        dev.type, dev.mode, dev.mtime = tarfile.DIRTYPE, 0o755, ctx.source_date_epoch
        tar.addfile(dev)


@dataclass
class LayerFacts:
    files: int = 0
    unpacked_bytes: int = 0
    debian_packages: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def inspect_layer(tar_path: Path, ctx: BuildContext) -> LayerFacts:
    """Sizes, Debian package versions, and the invariants the pods rely on: everything
    but HOME belongs to root, no mtime after SOURCE_DATE_EPOCH."""
    facts = LayerFacts()
    home = "." + HOME
    with tarfile.open(tar_path) as tar:
        for member in tar:
            facts.files += 1
            if member.isfile():
                facts.unpacked_bytes += member.size
            if member.name == "./var/lib/dpkg/status":
                status = tar.extractfile(member)
                assert status is not None
                facts.debian_packages = dpkg_versions(status.read().decode())
            # (_apt owns apt's partial/ directories under /var)
            exempt = member.name == home or member.name.startswith("./var/")
            if member.uid != 0 and not exempt:
                facts.problems.append(f"{member.name} owned by uid {member.uid}")
            if member.mtime > ctx.source_date_epoch:
                facts.problems.append(f"{member.name}: mtime after SOURCE_DATE_EPOCH")
    return facts


def dpkg_versions(status: str) -> dict[str, str]:
    packages: dict[str, str] = {}
    for stanza in status.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " "
        )
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            packages[fields["Package"]] = fields.get("Version", "")
    return dict(sorted(packages.items()))


def oci_layout(spec: ImageSpec, ctx: BuildContext, layer: Path, layout: Path) -> None:
    image = f"{layout}:{ctx.version}"
    run(["umoci", "init", "--layout", layout])
    run(["umoci", "new", "--image", image])
    add_layer = [
        "umoci", "raw", "add-layer", "--image", image,
        "--history.created", ctx.created, "--history.author", "images/build.py",
        "--history.created_by", f"mmdebstrap {SUITE} + install_venv.py {spec.lock.name}",
        layer,
    ]  # fmt: skip
    run(add_layer)
    config = [
        "umoci", "config", "--image", image, "--no-history",
        "--created", ctx.created, "--architecture", ARCH, "--os", "linux",
        "--config.user", f"{UID}:{GID}", "--config.workingdir", HOME,
    ]  # fmt: skip
    for key, value in ctx.env(spec).items():
        config += ["--config.env", f"{key}={value}"]
    for arg in spec.entrypoint:
        config += ["--config.entrypoint", arg]
    for port in spec.ports:
        config += ["--config.exposedports", f"{port}/tcp"]
    for key, value in ctx.labels(spec).items():
        config += ["--config.label", f"{key}={value}", "--manifest.annotation", f"{key}={value}"]
    run(config)
    run(["umoci", "gc", "--layout", layout])


def write_archive(layout: Path, archive: Path, mtime: int) -> None:
    """A tar of the OCI layout: sorted members, root-owned, fixed mtime."""
    tmp = archive.with_name(archive.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(layout.rglob("*"), key=lambda p: p.relative_to(layout).as_posix()):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(layout).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = mtime
            info.mode = 0o755 if info.isdir() else 0o644
            if info.isdir():
                tar.addfile(info)
            else:
                with path.open("rb") as data:
                    tar.addfile(info, data)
    tmp.replace(archive)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def build(spec: ImageSpec, out_dir: Path, cache: Path) -> dict[str, object]:
    ctx = BuildContext.detect()
    timer = Timer()
    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(ctx.source_date_epoch)}
    for tool in ("mmdebstrap", "umoci"):
        if shutil.which(tool) is None:
            sys.exit(f"images: `{tool}` is not installed (apt-get install mmdebstrap umoci)")
    if not spec.lock.exists():
        sys.exit(f"images: {spec.lock} is missing: run `python images/build.py lock {spec.name}`")
    inputs = inputs_fingerprint(spec)
    work_root = cache / "work"
    work_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{spec.name}-", dir=work_root) as tmp:
        work = Path(tmp)
        with timer.step("project wheel"):
            wheel = project_wheel(ctx, work, env)
        with timer.step("wheelhouse"):
            wheels = wheelhouse(spec, cache, env)
        layer = work / "rootfs" / "rootfs.tar"
        layer.parent.mkdir()
        with timer.step("rootfs (mmdebstrap + install_venv.py)"):
            rootfs(spec, ctx, wheels, wheel, cache, layer)
        with timer.step("inspect"):
            facts = inspect_layer(layer, ctx)
        if facts.problems:
            problems = "\n  ".join(facts.problems[:20])
            sys.exit(f"images: the root filesystem breaks its invariants:\n  {problems}")
        layout = work / "oci"
        with timer.step("oci (umoci)"):
            oci_layout(spec, ctx, layer, layout)
        layer.unlink()
        archive = out_dir / spec.archive_name(ctx.version)
        with timer.step("archive"):
            write_archive(layout, archive, ctx.source_date_epoch)
        index = json.loads((layout / "index.json").read_text())
        manifest_digest = index["manifests"][0]["digest"]
        manifest = json.loads(
            (layout / "blobs" / "sha256" / manifest_digest.split(":", 1)[1]).read_text()
        )
    report: dict[str, object] = {
        "image": f"kubetune-{spec.name}",
        "tag": ctx.version,
        "archive": archive.name,
        "archive_sha256": sha256(archive),
        "archive_bytes": archive.stat().st_size,
        "manifest_digest": manifest_digest,
        "config_digest": manifest["config"]["digest"],
        "layer_bytes": sum(layer["size"] for layer in manifest["layers"]),
        "unpacked_bytes": facts.unpacked_bytes,
        "files": facts.files,
        "revision": ctx.revision,
        "inputs_sha256": inputs,
        "source_date_epoch": ctx.source_date_epoch,
        "seconds": round(time.monotonic() - started, 1),
        "steps_seconds": timer.steps,
        "lock": spec.lock.name,
        "debian_packages": facts.debian_packages,
    }
    (out_dir / spec.report_name(ctx.version)).write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="*", default=["all"], help="[lock] operator|trainer|all")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--upgrade", action="store_true", help="lock: re-resolve every pin")
    args = parser.parse_args(argv)
    words = list(args.what)
    locking = bool(words) and words[0] == "lock"
    names = words[1:] if locking else words
    if not names or names == ["all"]:
        names = list(IMAGES)
    unknown = [n for n in names if n not in IMAGES]
    if unknown:
        parser.error(f"unknown image {unknown}; choose from {sorted(IMAGES)}")
    for name in names:
        if locking:
            lock(IMAGES[name], upgrade=args.upgrade)
            continue
        report = build(IMAGES[name], args.out.resolve(), args.cache.resolve())
        summary = {k: report[k] for k in ("archive", "archive_bytes", "unpacked_bytes", "seconds")}
        print(json.dumps({**summary, "steps": report["steps_seconds"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
