"""The record of a data policy in a run's outputs: counts and kinds only, never values."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from kubetune_trainer.privacy.detect import KINDS, PLACEHOLDERS

if TYPE_CHECKING:
    from kubetune.api.data_policy import DataPolicy
    from kubetune_trainer.data.validate import DataReport


def data_policy_record(
    policy: DataPolicy | None, reports: list[DataReport]
) -> dict[str, Any] | None:
    """``lineage.json``'s ``dataPolicy``: the action, the kinds looked for, and per split
    the rows scanned, rows with findings and findings per kind (None without a policy)."""
    if policy is None or policy.personal_data is None:
        return None
    personal = policy.personal_data
    splits: dict[str, Any] = {}
    total: Counter[str] = Counter()
    for report in reports:
        scan = report.personal_data
        if scan is None:  # e.g. an eval split held out of the (scanned) train rows
            continue
        splits[report.split] = {
            "uri": report.uri,
            "rows": scan.rows,
            "rowsWithFindings": scan.rows_with_findings,
            "counts": dict(sorted(scan.counts.items())),
        }
        total.update(scan.counts)
    return {
        "personalData": {
            "action": personal.action,
            "kinds": list(personal.kinds) or list(KINDS),
            "detector": "kubetune_trainer.privacy (patterns with checksums; names and "
            "addresses only in context, no NER model)",
            "splits": splits,
            "total": dict(sorted(total.items())),
        }
    }


def personal_data_card_section(record: Any) -> str:
    """The model card's ``## Personal data`` section ('' without a policy)."""
    if not isinstance(record, dict) or not isinstance(record.get("personalData"), dict):
        return ""
    personal = record["personalData"]
    action = personal.get("action")
    total = personal.get("total") or {}
    kinds = ", ".join(personal.get("kinds") or [])
    said = {
        "redact": "each finding was replaced by a placeholder (such as "
        f"`{PLACEHOLDERS['email']}`) before tokenization: the model never saw the values",
        "allow": "the data was trained on as is; the findings were only counted",
        "refuse": "any finding would have failed validation; none was found",
    }.get(str(action), "")
    rows = [
        f"| {split} | {s.get('rows')} | {s.get('rowsWithFindings')} | "
        + (", ".join(f"{k} {n}" for k, n in (s.get("counts") or {}).items()) or "none")
        + " |"
        for split, s in (personal.get("splits") or {}).items()
    ]
    found = ", ".join(f"{k} {n}" for k, n in total.items()) or "none"
    return (
        "## Personal data\n\n"
        f"Policy `dataPolicy.personalData`: action **{action}** ({said}). Kinds looked for: "
        f"{kinds}. Found: {found}.\n\n"
        "| split | rows scanned | rows with findings | findings per kind |\n"
        "| --- | --- | --- | --- |\n" + "\n".join(rows) + "\n\n"
        "Detection is pattern-based (checksums for card and account numbers); names and "
        "street addresses are found only in context such as 'my name is ...'.\n\n"
    )
