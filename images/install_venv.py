"""Install kubetune into an image's root filesystem; runs INSIDE the image, as root.

The one recipe behind both ways of building an image: ``images/build.py`` (mmdebstrap +
umoci, no docker engine) runs it in the chroot, the Dockerfiles run it in a ``RUN`` step.
Standard library only (the image's Debian python3, 3.11).

    python3 install_venv.py --lock LOCK --wheels DIR [--user kubetune --uid 1000 --gid 1000]

* a virtualenv at ``/opt/kubetune`` (``--without-pip``: pip runs from Debian's pip wheel and
  is not left in the image);
* every pinned requirement of LOCK, from DIR only (``--no-index``), hash-checked
  (``--require-hashes``) and without resolving (``--no-deps``: the lock is complete). Wheels
  are installed first, then the few sdists (deepspeed has no wheel; its ``setup.py`` imports
  torch, so it builds without isolation against the venv);
* the project wheel ``kubetune-*.whl`` found in DIR (built from the checkout; not in LOCK);
* the non-root user the pods run as (``runAsUser``/``runAsGroup`` 1000 in
  ``kubetune_operator/settings.py``) with HOME ``/home/kubetune``, where the pods mount an
  emptyDir (``render/common.py``).

With ``SOURCE_DATE_EPOCH`` set, Python writes hash-based ``.pyc`` files (no timestamps), and
the ``/etc/shadow`` entry uses that date: the result is reproducible.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

VENV = Path("/opt/kubetune")
PIP_WHEELS = "/usr/share/python-wheels/pip-*.whl"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_entries(lock: Path) -> list[tuple[str, str]]:
    """``(normalized name, requirement block)`` for every pinned requirement of a
    pip-compile / ``uv pip compile`` lock (continuation lines joined)."""
    entries: list[tuple[str, str]] = []
    block: list[str] = []
    for raw in lock.read_text().splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("--hash") else raw
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        block.append(line.rstrip("\\").strip())
        if not line.endswith("\\"):
            requirement = " ".join(block)
            block = []
            match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==", requirement)
            if not match:
                sys.exit(f"install_venv: not a pinned requirement in {lock}: {requirement}")
            entries.append((normalize(match.group(1)), requirement))
    return entries


def has_wheel(name: str, wheels: Path) -> bool:
    return any(normalize(path.name.split("-", 1)[0]) == name for path in wheels.glob("*.whl"))


def pip(*args: str, env: dict[str, str]) -> None:
    (pip_wheel,) = glob.glob(PIP_WHEELS) or [""]
    if not pip_wheel:
        sys.exit(f"install_venv: no pip wheel at {PIP_WHEELS} (install python3-pip-whl)")
    command = [str(VENV / "bin" / "python"), f"{pip_wheel}/pip", *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, env=env)


def add_user(user: str, uid: int, gid: int, home: Path) -> None:
    """Append the user and group (no useradd: its shadow entry would carry today's date)."""
    days = int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0) // 86400
    for path, line in (
        ("/etc/group", f"{user}:x:{gid}:"),
        ("/etc/passwd", f"{user}:x:{uid}:{gid}:kubetune:{home}:/usr/sbin/nologin"),
        ("/etc/shadow", f"{user}:!:{days}::::::"),
        ("/etc/gshadow", f"{user}:!::"),
    ):
        target = Path(path)
        if not target.exists():
            continue
        lines = target.read_text().splitlines()
        if any(existing.split(":", 1)[0] == user for existing in lines):
            continue
        target.write_text("\n".join([*lines, line]) + "\n")
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, uid, gid)
    home.chmod(0o755)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, required=True)
    parser.add_argument("--wheels", type=Path, required=True)
    parser.add_argument("--user", default="kubetune")
    parser.add_argument("--uid", type=int, default=1000)
    parser.add_argument("--gid", type=int, default=1000)
    args = parser.parse_args()

    env = {
        **os.environ,
        "PIP_NO_CACHE_DIR": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
        "PIP_ROOT_USER_ACTION": "ignore",
    }
    for name in ("PYTHONDONTWRITEBYTECODE", "PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_CONFIG_FILE"):
        env.pop(name, None)  # pip must compile .pyc files and look at the wheelhouse only
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(VENV)], check=True)
    entries = lock_entries(args.lock)
    wheels = [block for name, block in entries if has_wheel(name, args.wheels)]
    sdists = [block for name, block in entries if not has_wheel(name, args.wheels)]
    common = ["install", "--no-index", "--find-links", str(args.wheels), "--no-deps"]
    with tempfile.TemporaryDirectory() as tmp:
        for label, blocks, extra in (
            ("wheels", wheels, ["--only-binary=:all:"]),
            # sdists build against the venv (deepspeed's setup.py imports torch).
            ("sdists", sdists, ["--no-build-isolation", "--use-pep517"]),
        ):
            if not blocks:
                continue
            requirements = Path(tmp, f"{label}.txt")
            requirements.write_text("\n".join(blocks) + "\n")
            pip(*common, "--require-hashes", *extra, "-r", str(requirements), env=env)
    (project,) = sorted(args.wheels.glob("kubetune-*.whl"))
    pip(*common, str(project), env=env)
    # pip/setuptools' own caches and build leftovers, if any, do not belong in the image.
    for leftover in (Path("/root/.cache"), Path("/tmp/pip-build-env")):
        shutil.rmtree(leftover, ignore_errors=True)
    add_user(args.user, args.uid, args.gid, Path("/home") / args.user)
    return 0


if __name__ == "__main__":
    sys.exit(main())
