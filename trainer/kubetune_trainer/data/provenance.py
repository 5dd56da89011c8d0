"""Data provenance: the digest of every data input, checked against an approved allow-list
(``spec.dataset.provenance``) and recorded, with its row counts, the filters applied to it,
its redactions and the data policy, in lineage.json and the model card.

Inputs are the train and eval data, each continual protected task's data and each
evaluation set. Digests are :mod:`kubetune.contract.digest`'s (a directory's digest for a
directory). Messages name the input, its location and digest, never its contents.

Redactions and the data policy come from the personal-data work (``spec.dataPolicy``):
:func:`provenance_record` and :func:`provenance_section` take them as ``redactions``
(count per kind) and ``policy`` so they can be passed in; empty until then.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api.job import FineTuneJobSpec
from kubetune.api.resolve import ResolvedJob
from kubetune.contract.digest import sha256_path
from kubetune.contract.env import PROVENANCE_DIR_ENV
from kubetune.contract.provenance import (
    ALLOW_LIST_DIR,
    DEFAULT_KEY,
    AllowListError,
    ApprovedDigest,
    parse_allow_list,
)
from kubetune_trainer.errors import InvalidConfigError, InvalidDataError, TrainerError
from kubetune_trainer.uris import resolve_location

if TYPE_CHECKING:
    from kubetune_trainer.data.validate import DataReport, PreparedData

SCHEMA = "kubetune.io/provenance/v1"


@dataclass(frozen=True)
class DataInput:
    """One data input of a job: its role (train, eval, continual/<task>/train, ...) and
    location."""

    role: str
    uri: str


@dataclass(frozen=True)
class InputDigest:
    input: DataInput
    path: Path
    sha256: str
    approved: ApprovedDigest | None = None

    @property
    def kind(self) -> str:
        return "file" if self.path.is_file() else "directory"


def data_inputs(spec: FineTuneJobSpec) -> list[DataInput]:
    """Every data input the spec names (models are not data inputs: lineage has them)."""
    data = spec.dataset
    found = [DataInput("train", data.train)]
    if data.eval:
        found.append(DataInput("eval", data.eval))
    if spec.continual is not None:
        for task in spec.continual.protected_tasks:
            found.append(DataInput(f"continual/{task.name}/train", task.train))
            if task.eval:
                found.append(DataInput(f"continual/{task.name}/eval", task.eval))
    if spec.evaluation is not None:
        for eval_set in spec.evaluation.sets:
            found.append(DataInput(f"evaluation/{eval_set.name}", eval_set.uri))
    return found


def allow_list_location(spec: FineTuneJobSpec) -> tuple[str, str] | None:
    """(ConfigMap name, key) of the job's allow-list, or None without one."""
    prov = spec.dataset.provenance
    if prov is None or prov.allow_list_ref is None:
        return None
    return prov.allow_list_ref.name, prov.allow_list_ref.key or DEFAULT_KEY


def load_allow_list(spec: FineTuneJobSpec) -> dict[str, ApprovedDigest] | None:
    """The approved digests (None when the job names no allow-list, or when it is not
    mounted here and not required). A required list that is missing or does not parse is
    an InvalidConfigError naming the ConfigMap and key."""
    where = allow_list_location(spec)
    if where is None:
        return None
    name, key = where
    required = bool(spec.dataset.provenance and spec.dataset.provenance.require_approved)
    path = Path(os.environ.get(PROVENANCE_DIR_ENV) or ALLOW_LIST_DIR) / key
    if not path.is_file():
        if not required:
            return None
        raise InvalidConfigError(
            f"dataset.provenance: the allow-list ConfigMap {name} (key {key}) was not found "
            "in the job's namespace (or has no such key); create it with `kubetune provenance "
            "approve FILE... --configmap NAME`"
        )
    try:
        return parse_allow_list(path.read_text(), f"ConfigMap {name} key {key}")
    except (AllowListError, OSError, UnicodeDecodeError) as exc:
        raise InvalidConfigError(f"dataset.provenance: {exc}") from exc


def digest_inputs(
    spec: FineTuneJobSpec, allow_list: Mapping[str, ApprovedDigest] | None = None
) -> list[InputDigest]:
    """Resolve and hash every data input (an unreachable one is InvalidDataError)."""
    out = []
    for item in data_inputs(spec):
        path = resolve_location(item.uri, InvalidDataError, what=item.role, repo_type="dataset")
        digest = sha256_path(path)
        out.append(InputDigest(item, path, digest, (allow_list or {}).get(digest)))
    return out


def check_approved(job: ResolvedJob) -> str:
    """Validation: with ``requireApproved``, refuse (InvalidDataError) when any data input's
    digest is not on the allow-list, naming every such input and its digest. Returns a
    summary for the validation message ('' when the job names no allow-list)."""
    spec = job.spec
    where = allow_list_location(spec)
    if where is None:
        return ""
    allow_list = load_allow_list(spec)
    if allow_list is None:  # not required, not mounted: nothing to check against
        return ""
    digests = digest_inputs(spec, allow_list)
    missing = [d for d in digests if d.approved is None]
    required = bool(spec.dataset.provenance and spec.dataset.provenance.require_approved)
    name, key = where
    if missing and required:
        lines = "\n".join(
            f"  {d.input.role} {d.input.uri}: {d.kind} sha256 {d.sha256}" for d in missing
        )
        raise InvalidDataError(
            f"dataset.provenance: {len(missing)} of {len(digests)} data inputs are not on the "
            f"approved allow-list (ConfigMap {name}, key {key}):\n{lines}\n"
            "ask your platform team to review and approve them (kubetune provenance approve)"
        )
    approved = len(digests) - len(missing)
    return f"provenance: {approved} of {len(digests)} data inputs approved by ConfigMap {name}" + (
        "" if required else " (not required)"
    )


def filters_of(spec: FineTuneJobSpec, report: DataReport | None, role: str) -> list[str]:
    """What was done to an input's rows between the file and the training batches."""
    data = spec.dataset
    out = []
    if report is not None:
        if data.skip_invalid_rows:
            out.append(f"invalid rows skipped and counted ({report.skipped_rows} skipped)")
        else:
            out.append("invalid rows refused (the job fails on any)")
        out.append(
            f"rows longer than maxSeqLength {data.max_seq_length} tokens truncated "
            f"({report.truncated_rows} truncated)"
        )
    if role == "train" and not data.eval and (data.eval_split or 0) > 0:
        out.append(
            f"evalSplit {data.eval_split:g}: a share of rows held out for evaluation "
            f"(seed {spec.hyperparameters.seed}), not trained on"
        )
    if role == "eval" and report is not None and "evalSplit" in report.uri:
        out.append("held out from the training data (evalSplit)")
    if role.startswith("continual/") and role.endswith("/train") and spec.continual:
        replay = spec.continual.replay
        if replay is not None:
            out.append(f"rows replayed into training (replay ratio {replay.ratio:g})")
    out.append("no deduplication")
    return out


def provenance_record(
    *,
    role: str,
    uri: str,
    sha256: str | None,
    kind: str | None = None,
    report: DataReport | None = None,
    filters: list[str] | None = None,
    approval: Mapping[str, Any] | None = None,
    redactions: Mapping[str, int] | None = None,
    policy: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The provenance of one data input: digest, row counts, filters, redactions (count per
    kind of personal data removed), the data policy applied to it, and its approval."""
    counts = None
    if report is not None:
        counts = {
            "total": report.rows,
            "valid": report.valid_rows,
            "invalid": report.invalid_rows,
            "skippedInvalid": report.skipped_rows,
            "truncated": report.truncated_rows,
        }
    return {
        "role": role,
        "uri": uri,
        "sha256": sha256,
        "digestOf": kind,
        "rows": counts,
        "filters": list(filters or []),
        "redactions": dict(redactions or {}),
        "dataPolicy": dict(policy) if policy is not None else None,
        "approval": dict(approval) if approval is not None else None,
    }


def provenance_section(
    job: ResolvedJob,
    data: PreparedData,
    *,
    redactions: Mapping[str, Mapping[str, int]] | None = None,
    policy: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """lineage.json's ``provenance``: one record per data input. ``redactions`` is keyed by
    role (train, eval, ...); ``policy`` is the job's data policy (spec.dataPolicy)."""
    spec = job.spec
    prov = spec.dataset.provenance
    where = allow_list_location(spec)
    try:  # in the training pods the list is not mounted: the validation pod checked it
        allow_list = load_allow_list(spec) if where else None
    except TrainerError:
        allow_list = None
    reports: dict[str, tuple[DataReport, list[Path]]] = {
        "train": (data.train.report, data.train.files)
    }
    if data.eval is not None:
        reports["eval"] = (data.eval.report, data.eval.files)
    records = []
    roles = [i for i in data_inputs(spec)]
    if data.eval is not None and not spec.dataset.eval:  # held out of train
        roles.insert(1, DataInput("eval", data.eval.report.uri))
    for item in roles:
        report, files = reports.get(item.role, (None, []))
        path = files[0] if files else _resolve_quietly(item.uri, item.role)
        digest = sha256_path(path) if path is not None else None
        kind = None if path is None else ("file" if path.is_file() else "directory")
        approval: dict[str, Any] | None = None
        if where is not None:
            entry = allow_list.get(digest) if allow_list is not None and digest else None
            approval = {
                "required": bool(prov and prov.require_approved),
                "allowList": f"ConfigMap {where[0]} key {where[1]}",
                "approved": None if allow_list is None else entry is not None,
                "checkedBy": "validation pod" if allow_list is None else "this run",
            }
            if entry is not None and entry.name:
                approval["approvedAs"] = entry.name
        records.append(
            provenance_record(
                role=item.role,
                uri=item.uri,
                sha256=digest,
                kind=kind,
                report=report,
                filters=filters_of(spec, report, item.role),
                approval=approval,
                redactions=(redactions or {}).get(item.role),
                policy=policy,
            )
        )
    return {
        "schema": SCHEMA,
        "requireApproved": bool(prov and prov.require_approved),
        "allowList": {"configMap": where[0], "key": where[1]} if where else None,
        "dataPolicy": dict(policy) if policy is not None else None,
        "inputs": records,
    }


def _resolve_quietly(uri: str, role: str) -> Path | None:
    try:
        return resolve_location(uri, InvalidDataError, what=role, repo_type="dataset")
    except TrainerError:
        return None
