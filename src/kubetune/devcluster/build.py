"""Build (and cache) the control plane binaries by running the packaged ``data/build.sh``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kubetune.devcluster.versions import DATA_DIR, Binaries, DevClusterError

FALLBACK_GO = Path("/usr/local/go/bin/go")


def find_go() -> Path | None:
    """The Go toolchain used for builds: ``$GO``, ``go`` on PATH, or /usr/local/go/bin/go."""
    env = os.environ.get("GO")
    if env and Path(env).is_file():
        return Path(env)
    found = shutil.which("go")
    if found:
        return Path(found)
    if FALLBACK_GO.is_file():
        return FALLBACK_GO
    return None


def build(
    components: list[str] | None = None,
    *,
    force: bool = False,
    log_path: Path | None = None,
    on_line: Callable[[str], None] | None = None,
) -> Binaries:
    """Build every missing component (or ``components``) and return the binary paths.

    Output of the build goes to ``log_path`` (if given) and, line by line, to ``on_line``.
    Raises DevClusterError with the tail of the log when the build fails.
    """
    binaries = Binaries.default()
    wanted = components if components is not None else binaries.missing()
    if not wanted and not force:
        return binaries
    go = find_go()
    if go is None:
        raise DevClusterError(
            "no Go toolchain found: install Go >= "
            f"{binaries.versions.go_min} or set GO=/path/to/go to build the dev cluster"
        )
    cmd = ["bash", str(DATA_DIR / "build.sh"), *(["--force"] if force else []), *wanted]
    env = dict(os.environ, GO=str(go))
    tail: list[str] = []
    started = time.monotonic()
    log = log_path.open("a") if log_path else None
    try:
        with subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if log:
                    log.write(line)
                    log.flush()
                tail = [*tail[-40:], line.rstrip()]
                if on_line:
                    on_line(line.rstrip())
            rc = proc.wait()
    finally:
        if log:
            log.close()
    if rc != 0:
        raise DevClusterError(
            f"{' '.join(cmd)} failed with exit code {rc} after "
            f"{time.monotonic() - started:.0f}s:\n" + "\n".join(tail)
        )
    missing = binaries.missing()
    if components is None and missing:
        raise DevClusterError(f"build finished but components are still missing: {missing}")
    return binaries


def go_module_dir(module: str, version: str, go: Path | None = None) -> Path:
    """``module@version``'s directory in the Go module cache: ``go mod download`` fetches the
    module zip through the module proxy when it is not there (a download, never a build)."""
    go = go or find_go()
    if go is None:
        raise DevClusterError(f"no Go toolchain to download {module}@{version} (set GO)")
    with tempfile.TemporaryDirectory() as outside_any_module:
        proc = subprocess.run(
            [str(go), "mod", "download", "-json", f"{module}@{version}"],
            capture_output=True,
            text=True,
            cwd=outside_any_module,
            env=dict(os.environ, GOTOOLCHAIN="local", GOFLAGS=""),
            timeout=300,
            check=False,
        )
    try:
        info = json.loads(proc.stdout)
    except ValueError:
        info = {}
    directory = info.get("Dir")
    if proc.returncode != 0 or not directory or info.get("Error"):
        raise DevClusterError(
            f"go mod download {module}@{version} failed: {info.get('Error') or proc.stderr}"
        )
    return Path(directory)
