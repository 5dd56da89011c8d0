"""The personal-data detector: each kind is found, common look-alikes are not, and
findings and logs never carry the values."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

import pytest

from kubetune_trainer.privacy import (
    KINDS,
    PLACEHOLDERS,
    Finding,
    find_personal_data,
    iban_valid,
    luhn_valid,
    redact,
    redact_value,
    scan_rows,
    scan_value,
)
from kubetune_trainer.privacy.fake import fake_values, pii_chat_rows

FOUND = [
    ("email", "write to ana.lima+work@mail.example.co.uk now", "ana.lima+work@mail.example.co.uk"),
    ("phone", "call me on +44 20 7946 0958 after six", "+44 20 7946 0958"),
    ("phone", "my number is (555) 010-4477", "(555) 010-4477"),
    ("phone", "ring 555-010-4477 or", "555-010-4477"),
    ("phone", "Festnetz 030 1234 5678 bitte", "030 1234 5678"),
    ("creditCard", "card 4111 1111 1111 1111 expired", "4111 1111 1111 1111"),
    ("creditCard", "card 5500-0000-0000-0004 expired", "5500-0000-0000-0004"),
    ("creditCard", "amex 3782 822463 10005 ok", "3782 822463 10005"),
    ("creditCard", "pan 6011111111111117.", "6011111111111117"),
    ("bankAccount", "IBAN DE89 3704 0044 0532 0130 00 please", "DE89 3704 0044 0532 0130 00"),
    ("bankAccount", "to GB82WEST12345698765432.", "GB82WEST12345698765432"),
    ("nationalId", "SSN 123-45-6789 on file", "123-45-6789"),
    ("ipAddress", "from 203.0.113.42.", "203.0.113.42"),
    ("ipAddress", "v6 2001:db8:85a3::8a2e:370:7334 blocked", "2001:db8:85a3::8a2e:370:7334"),
    ("personName", "Hi, my name is Ana Lima and I need help", "Ana Lima"),
    ("personName", "Name: Olu Adeyemi\nIssue: login", "Olu Adeyemi"),
    ("personName", "I spoke to Mrs. Haddad yesterday", "Haddad"),
    ("personName", "Thanks for everything.\nRegards, John", "John"),
    ("streetAddress", "I moved to 221B Baker Street last week", "221B Baker Street"),
    ("streetAddress", "to 1600 Pennsylvania Ave, Suite 400", "1600 Pennsylvania Ave, Suite 400"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "text", "value"), FOUND, ids=[f"{k}-{i}" for i, (k, *_) in enumerate(FOUND)]
)
def test_each_kind_is_found_exactly(kind: str, text: str, value: str) -> None:
    findings = find_personal_data(text)
    assert [(f.kind, text[f.start : f.end]) for f in findings] == [(kind, value)]
    redacted, counts = redact(text)
    assert value not in redacted and PLACEHOLDERS[kind] in redacted
    assert counts == Counter({kind: 1})


NOT_FOUND = [
    "The meeting is on 2024-03-15 at 14:30:00.",
    "Released 15/03/2024; upgrade from 1.2.3 to version 1.2.3.4 or v10.0.0.1",
    "Order 4111 1111 1111 1112 is not a card (bad checksum).",
    "Tracking number 1234567890123456 and 9876543210987654",
    "Sort these numbers: 12 5 33 7 81 9 4 22 61 3 18 40 2 77 5 1",
    "pi is 3.14159265358979 and e is 2.718281828459045",
    "ISBN 978-3-16-148410-0, ticket #2023-114, ZIP 94107",
    "Call std::vector<int>::size() at 10:45:12",
    "It costs 1,299.00 USD, 20% off, order 000-00-0000",
    "DE00 1234 5678 9012 3456 78 is not a valid IBAN",
    "How many words are in this list: apple pear plum",
    "the name of the game, Name: the thing below",
]


@pytest.mark.parametrize("text", NOT_FOUND)
def test_common_look_alikes_are_not_personal_data(text: str) -> None:
    assert find_personal_data(text) == [], [
        (f.kind, text[f.start : f.end]) for f in find_personal_data(text)
    ]


def test_random_non_luhn_16_digit_numbers_are_never_cards() -> None:
    rng = random.Random(7)
    numbers: list[str] = []
    while len(numbers) < 2000:
        n = str(rng.randint(10**15, 10**16 - 1))
        if not luhn_valid(n):
            numbers.append(n)
    for n in numbers:
        for text in (n, " ".join(n[i : i + 4] for i in range(0, 16, 4))):
            assert not any(f.kind == "creditCard" for f in find_personal_data(f"ref {text} ok"))


def test_validators() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89370400440532013000") and not iban_valid("DE89370400440532013001")
    assert not iban_valid("DE8937040044053201300")  # wrong length for DE


def test_kinds_select_a_subset_and_unknown_kinds_are_an_error() -> None:
    text = "mail ana@example.com or call +44 20 7946 0958"
    assert [f.kind for f in find_personal_data(text, ["phone"])] == ["phone"]
    assert redact(text, {"email"})[0] == "mail <EMAIL> or call +44 20 7946 0958"
    with pytest.raises(ValueError, match="unknown personal data kinds"):
        find_personal_data(text, ["ssn"])


def test_findings_hold_no_value() -> None:
    text = "mail ana@example.com"
    (finding,) = find_personal_data(text)
    assert finding == Finding("email", 5, 20)
    assert "ana@" not in repr(finding)


def test_overlaps_resolve_to_one_finding() -> None:
    text = "IBAN GB82WEST12345698765432 and card 4111111111111111"
    kinds = [f.kind for f in find_personal_data(text)]
    assert kinds == ["bankAccount", "creditCard"]


def test_every_fake_value_is_found_as_its_kind() -> None:
    rng = random.Random(3)
    for _ in range(300):
        for kind, value in fake_values(rng).items():
            if kind == "personName":  # a bare name has no context: see personName tests
                continue
            assert [f.kind for f in find_personal_data(value)] == [kind], (kind, value)


def test_rows_of_every_format_are_scanned_in_every_text_field() -> None:
    chat = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "I am ana@example.com"},
            {"role": "assistant", "content": "Noted, call +1 555 010 1234"},
        ]
    }
    preference = {
        "prompt": "Where do I live? 221 Baker Street",
        "chosen": "At <ADDRESS>, card 4111 1111 1111 1111",
        "rejected": "At 10 Downing Street, from 192.0.2.7",
    }
    assert scan_value(chat) == Counter({"email": 1, "phone": 1})
    assert scan_value(preference) == Counter({"streetAddress": 2, "creditCard": 1, "ipAddress": 1})
    redacted, counts = redact_value(preference)
    assert redacted["chosen"] == "At <ADDRESS>, card <CREDIT_CARD>"
    assert sum(counts.values()) == 4
    assert redact_value({"role": "a@example.com", "images": ["x@example.com.png"]})[1] == Counter()


def test_scan_rows_reports_file_line_and_kind_only() -> None:
    rows = [
        SimpleNamespace(source="d.jsonl", line=1, value={"text": "clean row"}),
        SimpleNamespace(
            source="d.jsonl", line=2, value={"text": "ana@example.com, bob@example.com"}
        ),
        SimpleNamespace(source="d.jsonl", line=3, value=None),
        SimpleNamespace(source="d.jsonl", line=4, value={"text": "SSN 123-45-6789"}),
    ]
    scan = scan_rows(rows)
    assert scan.rows == 4 and scan.rows_with_findings == 2
    assert scan.counts == Counter({"email": 2, "nationalId": 1})
    assert [str(f) for f in scan.findings] == ["d.jsonl:2: email", "d.jsonl:4: nationalId"]
    assert scan.findings[0].count == 2
    assert "example.com" not in repr(scan) and "6789" not in repr(scan)


def test_sample_pii_chats_redact_completely() -> None:
    rows = pii_chat_rows(200, seed=5)
    scan = scan_rows(SimpleNamespace(source="s", line=i, value=r) for i, r in enumerate(rows))
    assert set(scan.counts) == set(KINDS)
    for row in rows:
        redacted, _ = redact_value(row)
        assert scan_value(redacted) == Counter()
