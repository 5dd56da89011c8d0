"""The validation pass: every row is parsed and tokenized before training starts.

Bad rows are collected with file, line and reason. By default any bad row fails the
job before a GPU-hour is spent (ExitCode.INVALID_DATA); with ``skipInvalidRows`` they
are left out and counted, and the count reaches the metrics, the progress document and
the model card. Rows longer than ``maxSeqLength`` are truncated and counted as well:
nothing is dropped or cut silently.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.data_policy import PersonalDataPolicy
from kubetune.api.methods import METHOD_TRAITS
from kubetune.api.resolve import ResolvedJob
from kubetune.api.sources import DatasetSpec
from kubetune_trainer.data.encode import (
    Encoded,
    EncodedPair,
    EncodedPrompt,
    EncodedSample,
    EncodedUnpaired,
    Encoder,
    unpair,
)
from kubetune_trainer.data.formats import RowError, VisionChatExample, parse_row
from kubetune_trainer.data.readers import iter_rows
from kubetune_trainer.errors import InvalidDataError
from kubetune_trainer.privacy import NON_TEXT_KEYS, PersonalDataScan, redact_value, scan_value
from kubetune_trainer.uris import resolve_location

MAX_ISSUES_IN_MESSAGE = 10


@dataclass(frozen=True)
class RowIssue:
    """One unusable row."""

    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


@dataclass
class DataReport:
    """What the validation pass found in one split."""

    split: str
    uri: str
    rows: int = 0
    valid_rows: int = 0
    truncated_rows: int = 0
    tokens: int = 0
    label_tokens: int = 0
    issues: list[RowIssue] = field(default_factory=list)
    skipped: bool = False
    #: personal data found (spec.dataPolicy.personalData; None without a policy)
    personal_data: PersonalDataScan | None = None

    @property
    def invalid_rows(self) -> int:
        return len(self.issues)

    @property
    def skipped_rows(self) -> int:
        return self.invalid_rows if self.skipped else 0

    def summary(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "uri": self.uri,
            "rows": self.rows,
            "validRows": self.valid_rows,
            "invalidRows": self.invalid_rows,
            "skippedRows": self.skipped_rows,
            "truncatedRows": self.truncated_rows,
            "tokens": self.tokens,
            "labelTokens": self.label_tokens,
        } | ({"personalData": personal_data_summary(self)} if self.personal_data else {})


@dataclass
class SplitData:
    examples: list[Encoded]
    report: DataReport
    files: list[Path] = field(default_factory=list)


@dataclass
class PreparedData:
    """Encoded train/eval examples plus the validation reports."""

    train: SplitData
    eval: SplitData | None

    @property
    def reports(self) -> list[DataReport]:
        return [self.train.report] + ([self.eval.report] if self.eval else [])


def encode_split(
    path: Path,
    uri: str,
    split: str,
    data: DatasetSpec,
    encoder: Encoder,
    unpaired: bool = False,
    personal_data: PersonalDataPolicy | None = None,
) -> SplitData:
    """Parse, check and tokenize every row of one split; with ``unpaired`` (a method that
    trains on unpaired examples, KTO) a preference row becomes two examples.

    With a ``personal_data`` policy every text field of every row is scanned first; with
    action redact the findings are replaced by placeholders before the row is parsed and
    tokenized, so the model never sees them."""
    report = DataReport(split=split, uri=uri, skipped=data.skip_invalid_rows)
    mapping = data.field_mapping.model_dump(exclude_none=True) if data.field_mapping else {}
    kinds = personal_data.kinds if personal_data else None
    redacting = personal_data is not None and personal_data.action == "redact"
    skip = NON_TEXT_KEYS | {mapping[k] for k in ("images", "label") if k in mapping}
    if personal_data is not None:
        report.personal_data = PersonalDataScan()
    examples: list[Encoded] = []
    for row in iter_rows(path, split=split):
        report.rows += 1
        value = row.value
        if report.personal_data is not None and value is not None:
            if redacting:
                value, found = redact_value(value, kinds, skip)
            else:
                found = scan_value(value, kinds, skip)
            report.personal_data.add_row(row.source, row.line, found)
        try:
            if row.error is not None or value is None:
                raise RowError(row.error or "empty row")
            example = parse_row(data.format, value, mapping)
            if isinstance(example, VisionChatExample):  # image paths: relative to the file
                example = dataclasses.replace(example, base_dir=Path(row.source).parent)
            encoded = encoder.encode(example)
        except RowError as exc:
            report.issues.append(RowIssue(row.source, row.line, str(exc)))
            continue
        report.valid_rows += 1
        report.truncated_rows += int(encoded.truncated)
        samples = _samples(encoded)
        report.tokens += sum(len(s.input_ids) for s in samples)
        report.label_tokens += sum(s.num_label_tokens for s in samples)
        if unpaired and isinstance(encoded, EncodedPair):
            examples.extend(unpair(encoded))
        else:
            examples.append(encoded)
    return SplitData(examples, report, [path])


def _samples(encoded: Encoded) -> list[EncodedSample | EncodedPrompt]:
    """The sequences a row stands for (a prompt has no labels: counted for its length)."""
    if isinstance(encoded, EncodedPair):
        return [encoded.chosen, encoded.rejected]
    if isinstance(encoded, EncodedUnpaired):
        return [encoded.sample]
    return [encoded]


def check_report(report: DataReport) -> None:
    """Fail on bad rows unless skipping is allowed; always fail on an empty split."""
    if report.issues and not report.skipped:
        shown = "\n".join(f"  {issue}" for issue in report.issues[:MAX_ISSUES_IN_MESSAGE])
        more = report.invalid_rows - MAX_ISSUES_IN_MESSAGE
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise InvalidDataError(
            f"{report.invalid_rows} of {report.rows} {report.split} rows are invalid "
            f"(set dataset.skipInvalidRows: true to skip and count them):\n{shown}{tail}"
        )
    if report.valid_rows == 0:
        raise InvalidDataError(f"the {report.split} set {report.uri} has no usable rows")


def check_personal_data(report: DataReport, policy: PersonalDataPolicy | None) -> None:
    """With action refuse, fail on any personal data: file, line and kind, never the value."""
    scan = report.personal_data
    if policy is None or policy.action != "refuse" or scan is None or not scan.findings:
        return
    shown = "\n".join(f"  {finding}" for finding in scan.findings[:MAX_ISSUES_IN_MESSAGE])
    more = len(scan.findings) - MAX_ISSUES_IN_MESSAGE
    tail = f"\n  ... and {more} more" if more > 0 else ""
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(scan.counts.items()))
    raise InvalidDataError(
        f"personal data in {scan.rows_with_findings} of {report.rows} {report.split} rows "
        f"({kinds}) and dataPolicy.personalData.action is refuse (remove it, or set action "
        f"redact to replace it with placeholders before training):\n{shown}{tail}"
    )


def personal_data_summary(report: DataReport) -> dict[str, Any]:
    """Counts only: rows scanned, rows with findings, findings per kind."""
    scan = report.personal_data
    if scan is None:
        return {}
    return {
        "rows": scan.rows,
        "rowsWithFindings": scan.rows_with_findings,
        "counts": dict(sorted(scan.counts.items())),
    }


def hold_out(examples: list[Encoded], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic train/eval index split; at least one row each way when possible."""
    n = len(examples)
    n_eval = round(n * fraction) if fraction > 0 else 0
    if fraction > 0 and n >= 2:
        n_eval = min(max(1, n_eval), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    eval_idx = sorted(order[:n_eval])
    chosen = set(eval_idx)
    return [i for i in range(n) if i not in chosen], eval_idx


def prepare_data(job: ResolvedJob, tokenizer: Any) -> PreparedData:
    """Resolve, read, validate and encode the train (and eval) data of a job."""
    data = job.spec.dataset
    eval_split = data.eval_split or 0.0
    encoder = _encoder(job, tokenizer)
    unpaired = "unpaired" in METHOD_TRAITS[job.spec.method].formats
    train_path = resolve_location(data.train, InvalidDataError, what="dataset", repo_type="dataset")
    policy = job.spec.data_policy.personal_data if job.spec.data_policy else None
    train = encode_split(train_path, data.train, "train", data, encoder, unpaired, policy)
    check_report(train.report)
    check_personal_data(train.report, policy)
    evaluation: SplitData | None = None
    if data.eval:
        eval_path = resolve_location(
            data.eval, InvalidDataError, what="eval dataset", repo_type="dataset"
        )
        evaluation = encode_split(eval_path, data.eval, "eval", data, encoder, unpaired, policy)
        check_report(evaluation.report)
        check_personal_data(evaluation.report, policy)
    elif eval_split > 0 and len(train.examples) >= 2:
        keep, held = hold_out(train.examples, eval_split, job.spec.hyperparameters.seed)
        held_examples = [train.examples[i] for i in held]
        eval_report = DataReport(
            split="eval",
            uri=f"{data.train} (evalSplit {eval_split:g})",
            rows=len(held_examples),
            valid_rows=len(held_examples),
            truncated_rows=sum(int(e.truncated) for e in held_examples),
        )
        evaluation = SplitData(held_examples, eval_report, train.files)
        train.examples = [train.examples[i] for i in keep]
    return PreparedData(train, evaluation)


def _encoder(job: ResolvedJob, tokenizer: Any) -> Encoder:
    """The text encoder, or for chat with images the model processor's (vision/)."""
    from kubetune_trainer.vision import is_vision_job
    from kubetune_trainer.vision.model import check_modality, model_dir_of

    data = job.spec.dataset
    model_dir = model_dir_of(job)
    if model_dir is not None:
        check_modality(job, model_dir)
    if is_vision_job(job) and model_dir is not None:
        from kubetune_trainer.vision.encode import vision_encoder

        return vision_encoder(job, model_dir)
    return Encoder(tokenizer, data.max_seq_length, data.completion_only_loss)


def write_issues(reports: list[DataReport], path: Path) -> None:
    """Every bad row, one JSON object per line, for the user to fix their data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for report in reports:
            for issue in report.issues:
                handle.write(json.dumps({"split": report.split, **asdict(issue)}) + "\n")


def sample_count(example: Encoded) -> int:
    return 2 if isinstance(example, EncodedPair) else 1


__all__ = [
    "DataReport",
    "EncodedPair",
    "EncodedSample",
    "PreparedData",
    "RowIssue",
    "SplitData",
    "check_personal_data",
    "check_report",
    "personal_data_summary",
    "prepare_data",
]
