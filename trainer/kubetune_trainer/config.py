"""Read the job the trainer runs: the operator's ``ResolvedJob`` document, as is.

The trainer has no model of its own for the job: every module reads the API's frozen
``kubetune.api.resolve.ResolvedJob`` (the FineTuneJob spec with every default filled in,
plus the derived world size and gradient accumulation). This module only parses it and
refuses documents the trainer cannot run; nothing here re-derives policy.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from kubetune.api.combinations import QLORA_STRATEGY_MESSAGE, qlora_shards_base
from kubetune.api.methods import METHOD_TRAITS
from kubetune.api.resolve import ResolvedJob
from kubetune_trainer.errors import InvalidConfigError


def check_runnable(job: ResolvedJob) -> ResolvedJob:
    """Refuse what ``resolve()`` would never produce or this trainer cannot run."""
    spec = job.spec
    if not METHOD_TRAITS[spec.method].supported:
        raise InvalidConfigError(f"method {spec.method} is not supported by this trainer version")
    hp = spec.hyperparameters
    if hp.learning_rate is None or hp.weight_decay is None:
        raise InvalidConfigError(
            "the document is not resolved: learningRate/weightDecay are unset "
            "(the operator must pass kubetune.api.resolve.resolve(job))"
        )
    dist = spec.distributed  # the API refuses it too; a hand-written document may not
    if qlora_shards_base(spec.method, dist.strategy, dist.zero_stage):
        raise InvalidConfigError(QLORA_STRATEGY_MESSAGE)
    for block in METHOD_TRAITS[spec.method].blocks:  # resolve() fills each of them
        parent, _, name = block.partition(".")
        holder = getattr(spec, parent)
        if name and (holder is None or getattr(holder, name) is None):
            raise InvalidConfigError(f"method {spec.method} needs spec.{block}")
    return job


def parse_document(text: str, source: str = "<config>") -> ResolvedJob:
    """Validate the resolved JSON document with the API."""
    try:
        resolved = ResolvedJob.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:10]
        )
        raise InvalidConfigError(f"{source} is not a valid resolved job: {problems}") from exc
    return check_runnable(resolved)


def load_job(path: Path) -> ResolvedJob:
    """Read and validate the document at ``path`` (``KUBETUNE_CONFIG``)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidConfigError(f"cannot read the job document {path}: {exc}") from exc
    return parse_document(text, str(path))


def env_flag(name: str) -> bool:
    """True for 1/true/yes/on (case-insensitive)."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}
