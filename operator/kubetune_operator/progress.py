"""Training progress: fetch rank 0's progress document and map it onto ``status.progress``.

The trainer serves :class:`kubetune.contract.ProgressDocument` over plain HTTP on its
metrics port; the operator pulls it, so training pods need no Kubernetes API rights. The
URL is a template (``http://{pod_ip}:{port}/progress`` by default) -- configuration, not a
test hook, and it lets a test (or a mesh-enabled cluster) point it elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import aiohttp
from pydantic import ValidationError

from kubetune.api.status import CheckpointStatus, Progress
from kubetune.contract.progress import ProgressDocument
from kubetune_operator.observed import PodView, ProgressSample

SUMMARY_MAX = 128


def clip_summary(text: str) -> str:
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 3] + "..."


def step_summary(step: int, total: int, state: str | None = None) -> str:
    """``120/300 (40%)`` for kubectl's Progress column."""
    if total > 0:
        pct = min(100, int(100 * step / total))
        text = f"{step}/{total} ({pct}%)"
    else:
        text = f"step {step}" if step else (state or "starting")
    if state in ("evaluating", "saving"):
        text += f" {state}"
    return clip_summary(text)


def _finite(value: float | None) -> float | None:
    # JSON has no NaN/Infinity: the API server would reject the whole status patch.
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def parse_document(document: Mapping[str, Any]) -> ProgressDocument | None:
    try:
        return ProgressDocument.model_validate(document)
    except ValidationError:
        return None


def map_progress(
    sample: ProgressSample,
    previous: Progress | None,
    previous_checkpoint: CheckpointStatus | None,
) -> tuple[Progress | None, CheckpointStatus | None]:
    """``status.progress`` and ``status.lastCheckpoint`` from a fetched document.

    ``lastUpdateTime`` is when the operator saw the step advance (its own clock, so the
    stall timeout does not depend on the trainer's clock); a repeat of the same step
    keeps the old time, which is what stall detection needs.
    """
    doc = parse_document(sample.document)
    if doc is None:
        return previous, previous_checkpoint
    last_update = previous.last_update_time if previous is not None else None
    advanced = previous is None or previous.step != doc.step or last_update is None
    eta = _finite(doc.eta_seconds)
    progress = Progress(
        step=doc.step,
        total_steps=doc.total_steps,
        epoch=max(0.0, _finite(doc.epoch) or 0.0),
        percent=doc.percent,
        eta_seconds=max(0, round(eta)) if eta is not None else None,
        loss=_finite(doc.loss),
        eval_loss=_finite(doc.eval_loss),
        tokens_per_second=(
            max(0.0, tps) if (tps := _finite(doc.tokens_per_second)) is not None else None
        ),
        summary=step_summary(doc.step, doc.total_steps, doc.state),
        last_update_time=sample.fetched_at if advanced else last_update,
    )
    checkpoint = previous_checkpoint
    if (
        doc.last_checkpoint_step is not None
        and doc.last_checkpoint_path
        and (checkpoint is None or checkpoint.step != doc.last_checkpoint_step)
    ):
        checkpoint = CheckpointStatus(
            step=doc.last_checkpoint_step,
            path=doc.last_checkpoint_path[:2048],
            time=sample.fetched_at,
        )
    return progress, checkpoint


def progress_url(
    template: str, pod: PodView, *, namespace: str, job: str, attempt: int, port: int
) -> str | None:
    """The rank-0 progress URL, or None while the pod has no IP and the template needs one."""
    if "{pod_ip}" in template and not pod.pod_ip:
        return None
    return template.format(
        pod_ip=pod.pod_ip or "",
        port=port,
        pod=pod.name,
        namespace=namespace,
        job=job,
        attempt=attempt,
    )


async def fetch_document(
    session: aiohttp.ClientSession, url: str, timeout: float
) -> dict[str, Any]:
    """GET the progress document; raises on HTTP/connection errors or non-JSON bodies."""
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        resp.raise_for_status()
        data = await resp.json(content_type=None)
    if not isinstance(data, dict):
        raise ValueError("progress document is not a JSON object")
    return data


def sample(document: Mapping[str, Any], now: datetime, attempt: int) -> ProgressSample:
    return ProgressSample(document=dict(document), fetched_at=now, attempt=attempt)
