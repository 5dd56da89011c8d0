"""Exit codes of the trainer process, agreed with the operator.

The operator restarts a gang only for retryable codes; a permanent code fails the job
at once with the trainer's message. Codes avoid 1 (generic Python crash), 2 (argparse),
126/127 (exec failures) and 128+N (killed by signal N).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Literal

ExitClass = Literal["success", "retryable", "permanent"]


class ExitCode(IntEnum):
    """What a trainer exit means."""

    SUCCESS = 0
    # Retryable: the infrastructure failed, the same config can succeed on a new attempt.
    RETRYABLE = 75  # EX_TEMPFAIL: preempted/SIGTERM after a checkpoint, comms timeout
    # Permanent: the job itself is wrong; retrying wastes GPUs.
    INVALID_CONFIG = 78  # EX_CONFIG: the resolved spec does not make sense
    INVALID_DATA = 65  # EX_DATAERR: bad rows, unknown format, empty dataset
    MODEL_UNAVAILABLE = 66  # EX_NOINPUT: base model missing or unreadable
    NUMERICAL_DIVERGENCE = 79  # NaN/inf loss, exploding gradient norm, RL KL ceiling
    UNSUPPORTED = 80  # method/feature not available on this hardware (e.g. QLoRA on CPU)


_PERMANENT = {
    ExitCode.INVALID_CONFIG,
    ExitCode.INVALID_DATA,
    ExitCode.MODEL_UNAVAILABLE,
    ExitCode.NUMERICAL_DIVERGENCE,
    ExitCode.UNSUPPORTED,
}

# Container exit codes that mean "the node or the runtime killed us", not "the job is wrong".
_SIGNAL_KILLED = {128 + 9, 128 + 15}  # SIGKILL (OOM killer, eviction), SIGTERM (drain)


def classify_exit_code(code: int) -> ExitClass:
    """Classify a container exit code as success, retryable or permanent.

    Unknown non-zero codes (a Python traceback exits 1) count as retryable: a crash we
    cannot attribute is more often infrastructure (NCCL, OOM on a bad node) than config,
    and ``backoffLimit`` bounds the cost.
    """
    if code == ExitCode.SUCCESS:
        return "success"
    if code in {int(c) for c in _PERMANENT}:
        return "permanent"
    if code == ExitCode.RETRYABLE or code in _SIGNAL_KILLED:
        return "retryable"
    return "retryable"


def exit_reason(code: int) -> str:
    """A CamelCase reason for conditions and events."""
    try:
        return {
            ExitCode.SUCCESS: "Completed",
            ExitCode.RETRYABLE: "Interrupted",
            ExitCode.INVALID_CONFIG: "InvalidConfig",
            ExitCode.INVALID_DATA: "InvalidData",
            ExitCode.MODEL_UNAVAILABLE: "ModelUnavailable",
            ExitCode.NUMERICAL_DIVERGENCE: "NumericalDivergence",
            ExitCode.UNSUPPORTED: "Unsupported",
        }[ExitCode(code)]
    except ValueError:
        if code == 128 + 9:
            return "Killed"
        if code == 128 + 15:
            return "Terminated"
        return "Error"
