"""``python -m kubetune_trainer``: one trainer process (alone or one rank under torchrun).

Reads the resolved job document from ``KUBETUNE_CONFIG`` (or ``--config``), then either
validates it (``--validate-only`` / ``KUBETUNE_VALIDATE_ONLY=1``) or trains. Every
anticipated failure exits with the contract's ExitCode and leaves a one-paragraph
message in ``/dev/termination-log`` (which Kubernetes shows in the pod status) and, under
the launcher, in ``$KUBETUNE_EXIT_DIR/rank-<N>.json`` so the launcher can report the
meaningful code instead of torchrun's generic 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path

from kubetune.api.resolve import ResolvedJob
from kubetune.contract import ExitCode, TrainerPaths
from kubetune.contract.env import (
    CONFIG_ENV,
    EXIT_DIR_ENV,
    OUTPUT_ENV,
    RANK_ENV,
    TERMINATION_LOG_ENV,
    VALIDATE_ONLY_ENV,
)
from kubetune.contract.evaluation import termination_message
from kubetune.contract.paths import TERMINATION_LOG
from kubetune_trainer.config import env_flag, load_job
from kubetune_trainer.errors import TrainerError, UnsupportedError
from kubetune_trainer.uris import local_path_of

MAX_MESSAGE = 4000  # Kubernetes keeps at most 4096 bytes of the termination message

log = logging.getLogger("kubetune.trainer")


def configure_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s rank{rank} %(levelname)s %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def output_dir_for(job: ResolvedJob) -> Path:
    """KUBETUNE_OUTPUT_DIR wins; otherwise the local path of ``spec.output.uri``."""
    env = os.environ.get(OUTPUT_ENV)
    if env:
        return Path(env)
    local = local_path_of(job.spec.output.uri)
    if local is None:
        raise UnsupportedError(
            f"output {job.spec.output.uri}: the trainer writes to a mounted volume; for s3:// "
            f"outputs the operator must mount a staging volume and set {OUTPUT_ENV}"
        )
    return local


def termination_log_path() -> Path:
    return Path(os.environ.get(TERMINATION_LOG_ENV, str(TERMINATION_LOG)))


def write_termination_message(message: str) -> None:
    """Best effort: Kubernetes surfaces this file as the container's exit message.

    The default path is only written when it exists (Kubernetes mounts it into every
    container); a path named by KUBETUNE_TERMINATION_LOG is created if needed.
    """
    path = termination_log_path()
    explicit = TERMINATION_LOG_ENV in os.environ
    try:
        if (path.exists() or explicit) and os.access(
            path if path.exists() else path.parent, os.W_OK
        ):
            path.write_text(message[:MAX_MESSAGE])
    except OSError:
        pass


def record_exit(code: int, message: str) -> None:
    directory = os.environ.get(EXIT_DIR_ENV)
    if not directory:
        return
    rank = os.environ.get(RANK_ENV, "0")
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / f"rank-{rank}.json").write_text(
            json.dumps({"rank": int(rank), "code": int(code), "message": message[:MAX_MESSAGE]})
        )
    except OSError:
        pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kubetune_trainer", description=__doc__)
    parser.add_argument(
        "--config", type=Path, help="resolved job document (default $KUBETUNE_CONFIG)"
    )
    parser.add_argument("--output-dir", type=Path, help="output directory (default from the job)")
    parser.add_argument(
        "--validate-only",
        action="store_true",
        help="check config, model and data, then exit (the operator's CPU-only step)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.config:
        os.environ[CONFIG_ENV] = str(args.config)
    if args.output_dir:
        os.environ[OUTPUT_ENV] = str(args.output_dir)
    rank = int(os.environ.get(RANK_ENV, "0"))
    configure_logging(rank)
    validate_only = args.validate_only or env_flag(VALIDATE_ONLY_ENV)
    try:
        paths = TrainerPaths.from_env()
        job = load_job(paths.config)
        paths = TrainerPaths.from_env(output_dir=output_dir_for(job))
        if validate_only:
            from kubetune.contract.plan import encode_plan
            from kubetune_trainer.preflight import check_job

            message, plan = check_job(job, paths.output_dir)
            print(message, flush=True)
            if plan is not None:  # the operator reads it from the line after the first
                line = encode_plan(plan)
                head = message.encode()[: MAX_MESSAGE - len(line.encode()) - 1]
                write_termination_message(head.decode(errors="ignore") + "\n" + line)
            else:
                write_termination_message(message)
            record_exit(ExitCode.SUCCESS, message)
            return int(ExitCode.SUCCESS)
        from kubetune_trainer.run import run_training

        result = run_training(job, paths)
        message = f"training finished: {result.steps} steps, outputs in {result.output_dir}"
        if result.evaluation is not None:
            message += f"; evaluation {result.evaluation.verdict}: {result.evaluation.message}"
        if rank == 0:
            print(message, flush=True)
            # the operator reads the evaluation summary from the line after the first
            write_termination_message(termination_message(message, result.evaluation))
        record_exit(ExitCode.SUCCESS, message)
        return int(ExitCode.SUCCESS)
    except TrainerError as exc:
        code = exc.exit_code
        message = f"{type(exc).__name__} ({code.name}): {exc.message}"
        log.error("%s", message)
        write_termination_message(message)
        record_exit(code, message)
        return int(code)
    except Exception as exc:  # a crash we cannot attribute: the operator retries it
        trace = traceback.format_exc()
        log.error("unexpected error: %s\n%s", exc, trace)
        message = f"unexpected error: {type(exc).__name__}: {exc}"
        write_termination_message(message + "\n" + trace[-2000:])
        record_exit(1, message)
        return 1


def entrypoint() -> None:
    """Exit with ``os._exit``: after a distributed failure, interpreter teardown could
    abort inside the communication library and replace the meaningful exit code."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entrypoint()
