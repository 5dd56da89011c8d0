"""Training progress: fetch rank 0's progress document and map it onto ``status.progress``.

The trainer serves :class:`kubetune.contract.ProgressDocument` over plain HTTP on its
metrics port; the operator pulls it, so training pods need no Kubernetes API rights. The
URL is a template (``http://{pod_ip}:{port}/progress`` by default) -- configuration, not a
test hook, and it lets a test (or a mesh-enabled cluster) point it elsewhere.

The document comes from a pod whose image the tenant chose, so it is untrusted input: the
fetch is bounded in size (:data:`MAX_BODY_BYTES`, no compression) and time, never follows a
redirect (a pod must not make the operator send requests elsewhere), the document must
validate as a :class:`ProgressDocument`, and every number written to ``status.progress`` is
finite and clamped to what the CRD (and the API server's int64 integers) accept -- one
absurd value must not make every later status write of the job fail.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import aiohttp
from pydantic import ValidationError

from kubetune.api.status import CheckpointStatus, Progress
from kubetune.contract.progress import ProgressDocument
from kubetune_operator.observed import PodView, ProgressSample
from kubetune_operator.reasons import Reason

SUMMARY_MAX = 128
#: The largest progress document read; a real one is a few hundred bytes.
MAX_BODY_BYTES = 64 * 1024
#: The API server stores ``type: integer`` as int64: anything larger is refused.
MAX_API_INT = 2**63 - 1
#: Longest error text kept for the ProgressKnown condition (it may quote the pod's answer).
MAX_ERROR = 512
#: Checkpoint paths are capped by the CRD (status.lastCheckpoint.path maxLength).
MAX_CHECKPOINT_PATH = 2048


class ProgressError(Exception):
    """The progress document could not be had: ``kind`` is a small fixed set (metric label,
    condition reason), the message says what happened."""

    UNREACHABLE = "unreachable"
    HTTP = "http"
    REDIRECT = "redirect"
    TOO_LARGE = "too_large"
    INVALID = "invalid"

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


#: ProgressSample.error starts with this when the pod answered with an unusable document
#: (as opposed to not answering at all).
INVALID_PREFIX = "invalid progress document: "


def error_reason(error: str) -> Reason:
    """The ProgressKnown=False reason for a sample's error text."""
    if error.startswith(INVALID_PREFIX):
        return Reason.PROGRESS_INVALID
    return Reason.PROGRESS_UNREACHABLE


def describe_error(exc: BaseException) -> tuple[str, str]:
    """(metric label, condition text) of a failed fetch."""
    if isinstance(exc, ProgressError):
        kind, text = exc.kind, str(exc)
    elif isinstance(exc, TimeoutError):
        kind, text = ProgressError.UNREACHABLE, "timed out"
    else:
        kind, text = ProgressError.UNREACHABLE, f"{type(exc).__name__}: {exc}"
    if kind == ProgressError.INVALID:
        text = INVALID_PREFIX + text
    return kind, clip(text, MAX_ERROR)


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip_summary(text: str) -> str:
    return clip(text, SUMMARY_MAX)


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


def _count(value: int) -> int:
    """A non-negative integer the API server can store."""
    return max(0, min(int(value), MAX_API_INT))


def parse_document(document: Mapping[str, Any]) -> ProgressDocument | None:
    try:
        return ProgressDocument.model_validate(document)
    except (ValidationError, ValueError, TypeError):
        return None


def check_document(document: Any) -> dict[str, Any]:
    """The document if it is a valid :class:`ProgressDocument`; raises ProgressError."""
    if not isinstance(document, dict):
        raise ProgressError(ProgressError.INVALID, "not a JSON object")
    try:
        ProgressDocument.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'document'}: {err['msg']}"
            for err in exc.errors(include_input=False, include_url=False)[:5]
        )
        raise ProgressError(ProgressError.INVALID, problems) from None
    return document


def map_progress(
    sample: ProgressSample,
    previous: Progress | None,
    previous_checkpoint: CheckpointStatus | None,
) -> tuple[Progress | None, CheckpointStatus | None]:
    """``status.progress`` and ``status.lastCheckpoint`` from a fetched document.

    ``lastUpdateTime`` is when the operator saw the step advance (its own clock, so the
    stall timeout does not depend on the trainer's clock); a repeat of the same step
    keeps the old time, which is what stall detection needs. Every number is finite and
    within the CRD's bounds (non-finite ones are dropped, huge ones clamped).
    """
    doc = parse_document(sample.document)
    if doc is None:
        return previous, previous_checkpoint
    step = _count(doc.step)
    total = _count(doc.total_steps)
    percent = doc.percent
    if total == 0 and previous is not None and previous.total_steps:
        # A document without a plan yet (a new attempt still loading) says nothing about
        # how far the job got: keep the numbers so far rather than report 0/0 -- an attempt
        # that finishes before it is sampled again would otherwise end at 0.
        step, total, percent = previous.step, previous.total_steps, previous.percent
    last_update = previous.last_update_time if previous is not None else None
    advanced = previous is None or previous.step != step or last_update is None
    eta = _finite(doc.eta_seconds)
    epoch = _finite(doc.epoch)
    tps = _finite(doc.tokens_per_second)
    progress = Progress(
        step=step,
        total_steps=total,
        epoch=max(0.0, epoch) if epoch is not None else 0.0,
        percent=max(0, min(100, percent)),
        eta_seconds=_count(round(min(max(eta, 0.0), 1e19))) if eta is not None else None,
        loss=_finite(doc.loss),
        eval_loss=_finite(doc.eval_loss),
        tokens_per_second=max(0.0, tps) if tps is not None else None,
        summary=step_summary(step, total, doc.state),
        warnings=[clip(w, 1024) for w in doc.warnings[-4:]] if doc.warnings else None,
        dp_epsilon=max(0.0, dp) if (dp := _finite(doc.dp_epsilon)) is not None else None,
        last_update_time=sample.fetched_at if advanced else last_update,
    )
    checkpoint = previous_checkpoint
    cp_step = doc.last_checkpoint_step
    if (
        cp_step is not None
        and cp_step >= 0
        and doc.last_checkpoint_path
        and (checkpoint is None or checkpoint.step != _count(cp_step))
    ):
        checkpoint = CheckpointStatus(
            step=_count(cp_step),
            path=doc.last_checkpoint_path[:MAX_CHECKPOINT_PATH],
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


def new_session(limit: int = 64) -> aiohttp.ClientSession:
    """The poller's HTTP session: no proxies from the environment, no cookies, no automatic
    decompression (a small gzip body could inflate to gigabytes)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        auto_decompress=False,
    )


async def fetch_document(
    session: aiohttp.ClientSession,
    url: str,
    timeout: float,
    *,
    max_bytes: int = MAX_BODY_BYTES,
) -> dict[str, Any]:
    """GET and validate the progress document; raises :class:`ProgressError` (or a
    connection error / TimeoutError) when there is no usable one.

    At most ``max_bytes`` are read and ``timeout`` bounds the whole exchange (a slow drip
    cannot hold the poller); redirects are refused, not followed.
    """
    async with session.get(
        url,
        timeout=aiohttp.ClientTimeout(total=timeout),
        allow_redirects=False,
        headers={"Accept": "application/json", "Accept-Encoding": "identity"},
    ) as resp:
        if 300 <= resp.status < 400:
            raise ProgressError(
                ProgressError.REDIRECT, f"HTTP {resp.status}: redirects are not followed"
            )
        if resp.status != 200:
            raise ProgressError(ProgressError.HTTP, f"HTTP {resp.status}")
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ProgressError(
                ProgressError.INVALID, f"Content-Encoding {encoding[:32]} is not accepted"
            )
        if resp.content_length is not None and resp.content_length > max_bytes:
            raise ProgressError(
                ProgressError.TOO_LARGE,
                f"body of {resp.content_length} bytes exceeds {max_bytes} bytes",
            )
        body = bytearray()
        async for chunk in resp.content.iter_chunked(16 * 1024):
            body += chunk
            if len(body) > max_bytes:
                raise ProgressError(ProgressError.TOO_LARGE, f"body exceeds {max_bytes} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ProgressError(ProgressError.INVALID, f"not JSON ({exc})") from None
    return check_document(data)


def sample(document: Mapping[str, Any], now: datetime, attempt: int) -> ProgressSample:
    return ProgressSample(document=dict(document), fetched_at=now, attempt=attempt)
