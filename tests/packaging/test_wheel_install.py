"""The wheel works outside the checkout: no path patches, every entry point reachable.

``pip wheel .`` builds the one distribution; it is installed (without dependencies)
into a fresh virtualenv in a temporary directory, and run from there. The heavy
dependencies (torch, kopf, ...) come from the test interpreter's site-packages through
a ``.pth`` line: that directory's own ``.pth`` files are not processed, so the
development (editable) install stays invisible and every ``kubetune*`` module must come
from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "local" / "lora-sft.yaml"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv outside the checkout with only the built wheel in it."""
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(REPO)],
        check=True,
        timeout=600,
    )
    (wheel,) = dist.glob("kubetune-*.whl")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "dev-dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=300,
    )
    return env_dir


def _run(
    env_dir: Path, cwd: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "200"
    return subprocess.run(
        list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_modules_come_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    probe = (
        "import kubetune, kubetune_operator, kubetune_trainer, kubetune.devcluster\n"
        "for m in (kubetune, kubetune_operator, kubetune_trainer): print(m.__file__)\n"
    )
    proc = _run(installed, tmp_path, str(installed / "bin" / "python"), "-c", probe)
    assert proc.returncode == 0, proc.stderr
    files = proc.stdout.split()
    assert len(files) == 3
    assert all(Path(f).is_relative_to(installed) for f in files), files


def test_validate_and_operator_help(installed: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "job.yaml"
    shutil.copy(EXAMPLE, manifest)
    proc = _run(installed, tmp_path, "kubetune", "validate", str(manifest))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "✓" in proc.stdout
    proc = _run(installed, tmp_path, "kubetune", "operator", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "run" in proc.stdout and "rbac" in proc.stdout
    proc = _run(installed, tmp_path, "kubetune", "operator", "rbac")
    assert proc.returncode == 0 and "ClusterRole" in proc.stdout


def test_run_local_trains_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "job.yaml"
    shutil.copy(EXAMPLE, manifest)
    proc = _run(
        installed,
        tmp_path,
        "kubetune",
        "run",
        str(manifest),
        "--local",
        "--max-steps",
        "4",
        "--output-dir",
        str(tmp_path / "out"),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert (tmp_path / "out" / "README.md").exists()
