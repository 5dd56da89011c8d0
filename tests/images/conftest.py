"""Fixtures of the image smoke tests: the OCI archives of ``images/build.py``, unpacked,
and a bubblewrap sandbox that runs their entrypoints the way a pod runs them (read-only
root, the image's user and env, emptyDirs on /tmp and $HOME).

* ``operator_image`` (session): ``dist/images/kubetune-operator-<version>.oci.tar`` when it
  was built from exactly these inputs (``inputs_sha256`` of its report), else built afresh
  into a temporary directory (1.5-2 minutes with warm caches).
* ``trainer_image`` (session): ``dist/images/kubetune-trainer-<version>.oci.tar`` if it exists
  (``make images``); skipped otherwise (a ~3 GB CUDA torch build), except under
  ``KUBETUNE_REQUIRE_TRAINER_IMAGE=1``, which fails instead.

The tests need mmdebstrap, umoci and bwrap (Debian packages). Without them they are
skipped, except under CI=true, where a missing tool FAILS the run with its name.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest

from images import build as image_build
from tests.e2e.conftest import cluster, namespace  # the dev cluster, for the operator image

__all__ = ["cluster", "namespace"]

IMAGES_TESTS = Path(__file__).resolve().parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
REQUIRE_TRAINER = os.environ.get("KUBETUNE_REQUIRE_TRAINER_IMAGE", "") == "1"
TOOLS = ("mmdebstrap", "umoci", "bwrap")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "images: builds or runs the OCI images (needs mmdebstrap, umoci, bwrap)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(IMAGES_TESTS):
            item.add_marker(pytest.mark.images)


def require_tools(*tools: str) -> None:
    """Skip (fail under CI=true) unless every tool is installed and bwrap can sandbox."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        reason = (
            f"image tools not installed: {', '.join(missing)} "
            "(apt-get install mmdebstrap umoci bubblewrap)"
        )
        if IN_CI:
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    if "bwrap" in tools:
        probe = subprocess.run(
            ["bwrap", "--ro-bind", "/", "/", "--unshare-all", "--uid", "1000", "true"],
            capture_output=True,
            text=True,
        )
        if probe.returncode:
            reason = f"bwrap cannot create a sandbox here: {probe.stderr.strip()}"
            if IN_CI:
                pytest.fail(f"CI=true: {reason}", pytrace=False)
            pytest.skip(reason)


@dataclass
class Image:
    """An unpacked OCI archive: its manifest, config and root filesystem."""

    archive: Path
    layout: Path
    rootfs: Path
    manifest: dict[str, Any]
    config: dict[str, Any]
    report: dict[str, Any]

    @property
    def layer(self) -> Path:
        (layer,) = self.manifest["layers"]
        return self.layout / "blobs" / "sha256" / layer["digest"].split(":", 1)[1]

    @property
    def user(self) -> tuple[int, int]:
        uid, _, gid = str(self.config["config"]["User"]).partition(":")
        return int(uid), int(gid)

    @property
    def env(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.config["config"].get("Env", []))

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.config["config"].get("Labels") or {})

    @cached_property
    def members(self) -> dict[str, tarfile.TarInfo]:
        """The layer's tar headers by path (``./etc/passwd``)."""
        with tarfile.open(self.layer, "r:gz") as tar:
            return {member.name: member for member in tar}

    def sandbox(
        self,
        command: Sequence[str],
        *,
        binds: Mapping[str, Path] | None = None,
        ro_binds: Mapping[str, Path] | None = None,
        env: Mapping[str, str] | None = None,
        entrypoint: bool = True,
    ) -> list[str]:
        """bwrap argv running ``command`` (after the image's entrypoint when
        ``entrypoint``) like a restricted pod: read-only root, the image's uid/gid, env
        and working directory, tmpfs on /tmp and $HOME (the pods' emptyDirs), no
        capabilities, own pid/ipc/uts namespaces; the host network (for /healthz)."""
        uid, gid = self.user
        config = self.config["config"]
        merged_env = {**self.env, **(env or {})}
        scratch = ("/tmp", merged_env.get("HOME", "/tmp"))
        for target, source in {**(ro_binds or {}), **(binds or {})}.items():
            # Mount points, made in the (unpacked) root filesystem as a runtime does.
            if any(target == s or target.startswith(s + "/") for s in scratch):
                continue
            point = self.rootfs / target.lstrip("/")
            if source.is_dir():
                point.mkdir(parents=True, exist_ok=True)
            elif not point.exists():
                point.parent.mkdir(parents=True, exist_ok=True)
                point.touch()
        argv = ["bwrap", "--ro-bind", str(self.rootfs), "/", "--proc", "/proc", "--dev", "/dev"]
        argv += ["--tmpfs", "/tmp", "--tmpfs", merged_env.get("HOME", "/tmp")]
        for target, source in (ro_binds or {}).items():
            argv += ["--ro-bind", str(source), target]
        for target, source in (binds or {}).items():
            argv += ["--bind", str(source), target]
        argv += ["--unshare-all", "--share-net", "--die-with-parent", "--new-session"]
        argv += ["--uid", str(uid), "--gid", str(gid), "--cap-drop", "ALL", "--clearenv"]
        for key, value in merged_env.items():
            argv += ["--setenv", key, value]
        argv += ["--chdir", config.get("WorkingDir") or "/"]
        prefix = list(config.get("Entrypoint") or []) if entrypoint else []
        return [*argv, "--", *prefix, *command]


def unpack(archive: Path, dest: Path, report: dict[str, Any]) -> Image:
    """Extract the OCI archive, then its (single) layer with tar: the root filesystem."""
    layout = dest / "layout"
    layout.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(layout, filter="data")
    index = json.loads((layout / "index.json").read_text())
    (entry,) = index["manifests"]

    def blob(digest: str) -> Path:
        return layout / "blobs" / "sha256" / digest.split(":", 1)[1]

    manifest = json.loads(blob(entry["digest"]).read_text())
    config = json.loads(blob(manifest["config"]["digest"]).read_text())
    rootfs = dest / "rootfs"
    rootfs.mkdir()
    image = Image(archive, layout, rootfs, manifest, config, report)
    owner = [] if os.geteuid() == 0 else ["--no-same-owner"]
    subprocess.run(
        ["tar", "--extract", "--gzip", "--file", str(image.layer), "-C", str(rootfs), *owner],
        check=True,
    )
    return image


def _report(spec: image_build.ImageSpec, out_dir: Path, version: str) -> dict[str, Any] | None:
    path = out_dir / spec.report_name(version)
    if not (out_dir / spec.archive_name(version)).exists() or not path.exists():
        return None
    report: dict[str, Any] = json.loads(path.read_text())
    return report


@pytest.fixture(scope="session")
def operator_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    require_tools(*TOOLS)
    spec = image_build.IMAGES["operator"]
    version = image_build.BuildContext.detect().version
    out_dir = image_build.DEFAULT_OUT
    report = _report(spec, out_dir, version)
    if report is None or report.get("inputs_sha256") != image_build.inputs_fingerprint(spec):
        out_dir = tmp_path_factory.mktemp("operator-image")  # dist/ is left alone
        report = image_build.build(spec, out_dir, image_build.DEFAULT_CACHE)
    dest = tmp_path_factory.mktemp("operator-unpacked")
    yield unpack(out_dir / spec.archive_name(version), dest, report)
    shutil.rmtree(dest, ignore_errors=True)


@pytest.fixture(scope="session")
def trainer_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    """The archive ``make images`` left in dist/images, even if the checkout moved on since
    (a 3 GB build is not repeated per test run; the report says what it was built from)."""
    spec = image_build.IMAGES["trainer"]
    version = image_build.BuildContext.detect().version
    out_dir = image_build.DEFAULT_OUT
    report = _report(spec, out_dir, version)
    if report is None:
        problem = f"no trainer image in {out_dir} (build it with `make images`)"
        if REQUIRE_TRAINER:
            pytest.fail(f"KUBETUNE_REQUIRE_TRAINER_IMAGE=1: {problem}", pytrace=False)
        pytest.skip(problem)
    require_tools("bwrap")
    dest = tmp_path_factory.mktemp("trainer-unpacked")  # ~6 GB: removed after the session
    yield unpack(out_dir / spec.archive_name(version), dest, report)
    shutil.rmtree(dest, ignore_errors=True)
