"""``python -m kubetune_trainer.launch``: torchrun around the trainer, with real exit codes.

torchrun reports any failed worker as exit code 1, which would hide the contract's
codes (bad data vs. preemption vs. NaN) from the operator. This wrapper runs torchrun
as a child, forwards SIGTERM/SIGINT to it (torchrun passes them on to the workers,
which checkpoint and exit 75), and afterwards reads the code every rank recorded in
``$KUBETUNE_EXIT_DIR``: a permanent code wins over a retryable one, which wins over
an unattributed crash. Two ways to call it:

- as a drop-in for ``torchrun`` (the command ``kubetune.contract.launch`` builds for the
  operator's pods and ``kubetune run --local``): the arguments are passed to torchrun
  verbatim when they name the module themselves::

      python -m kubetune_trainer.launch --nnodes=2 --nproc-per-node=8 --node-rank=0 \
          --rdzv-backend=static --master-addr=... --master-port=... -m kubetune_trainer

- with its own short option, for one machine::

      python -m kubetune_trainer.launch --nproc-per-node 2 [-- --validate-only]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType

from kubetune.contract import ExitCode, classify_exit_code
from kubetune.contract.env import EXIT_DIR_ENV
from kubetune.contract.launch import LAUNCH_MODULE, TORCHRUN_MODULE, torchrun_args


def collect_exit_code(exit_dir: Path, torchrun_code: int) -> tuple[int, str | None]:
    """The most meaningful code the ranks recorded (permanent > retryable > crash)."""
    records = []
    for file in sorted(exit_dir.glob("rank-*.json")):
        try:
            records.append(json.loads(file.read_text()))
        except (OSError, ValueError):
            continue
    if torchrun_code == 0:
        return 0, None
    failures = [r for r in records if r.get("code", 0) != 0]

    def rank_of(record: dict[str, object]) -> int:
        code = int(record["code"])  # type: ignore[call-overload]
        kind = classify_exit_code(code)
        if kind == "permanent":
            return 0
        if code == ExitCode.RETRYABLE:
            return 1
        return 2

    if failures:
        best = min(failures, key=rank_of)
        return int(best["code"]), str(best.get("message") or "")
    return (torchrun_code if torchrun_code > 0 else 1), None


def run(args: list[str], env: dict[str, str] | None = None) -> int:
    """Run torchrun with ``args``, forward termination signals, return the mapped exit code."""
    env = dict(env if env is not None else os.environ)
    with tempfile.TemporaryDirectory(prefix="kubetune-exit-") as exit_dir:
        env[EXIT_DIR_ENV] = exit_dir
        child = subprocess.Popen([sys.executable, "-m", TORCHRUN_MODULE, *args], env=env)

        def forward(signum: int, frame: FrameType | None) -> None:
            if child.poll() is None:
                child.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            code = child.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        mapped, _ = collect_exit_code(Path(exit_dir), code)
        return mapped


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-m" in argv or "--module" in argv:  # a complete torchrun command line
        return run(argv)
    trainer_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, trainer_args = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(prog=f"python -m {LAUNCH_MODULE}", description=__doc__)
    parser.add_argument("--nproc-per-node", type=int, default=1)
    args = parser.parse_args(argv)
    return run(torchrun_args(args.nproc_per_node, trainer_args=trainer_args))


if __name__ == "__main__":
    sys.exit(main())
