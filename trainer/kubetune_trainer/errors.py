"""Trainer failures that map onto the operator's exit-code contract.

Every anticipated failure is raised as a :class:`TrainerError` carrying the
:class:`~kubetune.contract.ExitCode` the operator acts on, so the decision "retry or
fail permanently" is made where the cause is known, not guessed from a traceback.
"""

from __future__ import annotations

from kubetune.contract import ExitCode


class TrainerError(Exception):
    """A failure with a known meaning for the operator."""

    exit_code: ExitCode = ExitCode.RETRYABLE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidConfigError(TrainerError):
    """The resolved spec cannot be run as written (permanent)."""

    exit_code = ExitCode.INVALID_CONFIG


class InvalidDataError(TrainerError):
    """The dataset is unreachable, malformed or empty (permanent)."""

    exit_code = ExitCode.INVALID_DATA


class ModelUnavailableError(TrainerError):
    """The base (or reference) model is missing or unreadable (permanent)."""

    exit_code = ExitCode.MODEL_UNAVAILABLE


class NumericalDivergenceError(TrainerError):
    """NaN/inf loss, an exploding gradient norm, or an RL policy held above its KL ceiling
    (permanent: a retry diverges the same way)."""

    exit_code = ExitCode.NUMERICAL_DIVERGENCE


class UnsupportedError(TrainerError):
    """The method or feature is not available on this hardware (permanent)."""

    exit_code = ExitCode.UNSUPPORTED


class PreemptedError(TrainerError):
    """Stopped by SIGTERM (or a simulated preemption) after a checkpoint (retryable)."""

    exit_code = ExitCode.RETRYABLE
