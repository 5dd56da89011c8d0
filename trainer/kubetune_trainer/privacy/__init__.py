"""Personal data in training data: detection, redaction and dataset scans.

The stable API other code imports::

    find_personal_data(text, kinds=None) -> list[Finding]      # kind, start, end; no value
    redact(text, kinds=None) -> (text, Counter[kind])           # "<EMAIL>", "<PHONE>", ...
    scan_dataset(path, kinds=None) -> PersonalDataScan          # counts, (file, line, kind)
    scan_rows(rows, kinds=None), scan_value(row), redact_value(row)

Kinds (``KINDS``): email, phone, creditCard, bankAccount, nationalId, ipAddress,
personName, streetAddress — the values of ``spec.dataPolicy.personalData.kinds``.
"""

from kubetune_trainer.privacy.detect import (
    KINDS,
    PLACEHOLDERS,
    Finding,
    check_kinds,
    find_personal_data,
    iban_valid,
    luhn_valid,
    redact,
)
from kubetune_trainer.privacy.scan import (
    NON_TEXT_KEYS,
    PersonalDataScan,
    RowFinding,
    redact_value,
    scan_dataset,
    scan_rows,
    scan_value,
)

__all__ = [
    "KINDS",
    "NON_TEXT_KEYS",
    "PLACEHOLDERS",
    "Finding",
    "PersonalDataScan",
    "RowFinding",
    "check_kinds",
    "find_personal_data",
    "iban_valid",
    "luhn_valid",
    "redact",
    "redact_value",
    "scan_dataset",
    "scan_rows",
    "scan_value",
]
