"""What the trainer does with personal data found in the training data (``spec.dataPolicy``).

``personalData`` is checked in the validation pass, before any GPU is requested: every
text field of every row (chat messages, prompts, completions, preference pairs) is
scanned for the chosen kinds. ``refuse`` fails validation naming file, line and kind;
``redact`` replaces each finding with a placeholder such as ``<EMAIL>`` before the row is
tokenized, so the model never sees it; ``allow`` trains on the data as is. Every action
records per-kind counts (never the values) in the run's lineage and model card.
"""

from __future__ import annotations

from typing import Any, Final, Literal, get_args

from pydantic import Field

from kubetune.api.base import ApiModel, cel

PersonalDataKind = Literal[
    "email",
    "phone",
    "creditCard",
    "bankAccount",
    "nationalId",
    "ipAddress",
    "personName",
    "streetAddress",
]
PERSONAL_DATA_KINDS: Final[tuple[str, ...]] = get_args(PersonalDataKind)
PersonalDataAction = Literal["refuse", "redact", "allow"]
DEFAULT_PERSONAL_DATA_ACTION: Final = "refuse"

_KIND_HELP = (
    "email (addresses), phone (international or separated numbers of 7 to 15 digits), "
    "creditCard (13 to 19 digits passing the Luhn check), bankAccount (IBANs passing the "
    "mod-97 check), nationalId (US social security numbers), ipAddress (IPv4 and IPv6), "
    "personName (only where context names a person: 'my name is ...', 'Name: ...', "
    "'Mr./Ms. ...'; there is no NER model) and streetAddress (number, street name and a "
    "street suffix such as 'Street' or 'Ave')"
)


class PersonalDataPolicy(ApiModel):
    """Which kinds of personal data to look for in the training data, and what to do."""

    action: PersonalDataAction = Field(
        default=DEFAULT_PERSONAL_DATA_ACTION,
        description="What to do with rows that contain personal data: refuse (fail "
        "validation, listing file, line and kind, never the value), redact (replace each "
        "finding with a placeholder such as <EMAIL> before training and count it) or "
        "allow (train on it as is, count it). Default refuse.",
    )
    kinds: list[PersonalDataKind] = Field(
        default_factory=list,
        max_length=len(PERSONAL_DATA_KINDS),
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="The kinds to look for; empty (the default) means all of them: "
        + _KIND_HELP
        + ". Detection is pattern-based: it finds structured identifiers reliably and "
        "names and addresses only in the forms listed.",
    )


class DataPolicy(ApiModel):
    """Rules the training data must follow, checked before training."""

    personal_data: PersonalDataPolicy | None = Field(
        default=None,
        description="Look for personal data (emails, phone numbers, card and account "
        "numbers, national IDs, IP addresses, names, street addresses) in every text field "
        "of the training and evaluation data, and refuse, redact or allow it. Unset: no "
        "scan.",
    )


def data_policy_rules() -> list[dict[str, Any]]:
    """CEL rules of FineTuneJobSpec that involve ``dataPolicy``."""
    return [
        cel(
            "has(self.dataPolicy) == has(oldSelf.dataPolicy) && "
            "(!has(self.dataPolicy) || self.dataPolicy == oldSelf.dataPolicy)",
            "dataPolicy cannot change after creation; create a new FineTuneJob instead",
            field_path=".dataPolicy",
        ),
    ]


__all__ = [
    "DEFAULT_PERSONAL_DATA_ACTION",
    "PERSONAL_DATA_KINDS",
    "DataPolicy",
    "PersonalDataAction",
    "PersonalDataKind",
    "PersonalDataPolicy",
    "data_policy_rules",
]
