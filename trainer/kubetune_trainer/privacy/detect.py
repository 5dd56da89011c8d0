"""Pattern-based detection of personal data in text: fast, offline, no model.

Structured identifiers are found by compiled regular expressions and confirmed by a
validator where one exists (Luhn for card numbers, ISO 7064 mod-97 for IBANs, the SSA's
area/group/serial rules for US social security numbers, :mod:`ipaddress` for IPs).
Names and street addresses have no such structure and there is no NER model here (one
cannot be downloaded into the training pods, and a pattern cannot tell "Paris" the
person from "Paris" the city), so they are found only where context makes them
unambiguous: "my name is Ana Lima", "Name: Ana Lima", "Mr. Lima", "Regards, Ana";
"221 Baker Street", "1600 Pennsylvania Ave". A name mentioned in passing is missed.

A :class:`Finding` holds a kind and a character span, never the text it covers, so
findings can be logged, counted and reported without leaking what they point at.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Final

#: every kind, in the order overlapping findings are resolved (earlier kinds win)
KINDS: Final[tuple[str, ...]] = (
    "email",
    "bankAccount",
    "creditCard",
    "nationalId",
    "ipAddress",
    "phone",
    "streetAddress",
    "personName",
)
PLACEHOLDERS: Final[dict[str, str]] = {
    "email": "<EMAIL>",
    "phone": "<PHONE>",
    "creditCard": "<CREDIT_CARD>",
    "bankAccount": "<BANK_ACCOUNT>",
    "nationalId": "<NATIONAL_ID>",
    "ipAddress": "<IP_ADDRESS>",
    "personName": "<PERSON>",
    "streetAddress": "<ADDRESS>",
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One piece of personal data: its kind and where it is (``text[start:end]``)."""

    kind: str
    start: int
    end: int


# --- validators ---------------------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a string of digits (card numbers)."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = ord(char) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


#: IBAN lengths per country (ISO 13616 registry, the common ones); others: 15 to 34
_IBAN_LENGTHS: Final[dict[str, int]] = {
    "AD": 24, "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22,
    "DK": 18, "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21,
    "HU": 28, "IE": 22, "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21,
    "MC": 27, "MT": 31, "NL": 18, "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SE": 24,
    "SI": 19, "SK": 24, "SM": 27, "TR": 26, "AE": 23, "SA": 24, "BR": 29, "IL": 23,
}  # fmt: skip


def iban_valid(iban: str) -> bool:
    """ISO 13616: country length and the mod-97 check of an IBAN without spaces."""
    iban = iban.upper()
    expected = _IBAN_LENGTHS.get(iban[:2])
    if (expected is not None and len(iban) != expected) or not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


def _card_ok(text: str) -> bool:
    digits = _NON_DIGIT.sub("", text)
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits)


def _iban_ok(text: str) -> bool:
    return iban_valid(text.replace(" ", ""))


def _ipv4_ok(text: str) -> bool:
    return True  # the pattern only matches octets 0-255


def _ipv6_ok(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return sum(1 for g in text.split(":") if g) >= 3


def _phone_ok(text: str) -> bool:
    digits = _NON_DIGIT.sub("", text)
    return 7 <= len(digits) <= 15 and len(set(digits)) > 2


# --- patterns -----------------------------------------------------------------------

_NON_DIGIT = re.compile(r"\D")
#: a number then a capitalised word: what a street address needs
_STREET_HINT = re.compile(r"\d[A-Za-z]?,?[ \t]+[A-Z]")
#: a run of at least 6 digits with separators: what every number-shaped kind needs (one
#: cheap pass lets clean text with only short numbers skip five detectors)
_NUMBERISH = re.compile(r"\d[\d .()/-]{4,}\d")
#: words one of which a context-based name needs (a substring test, cheaper than a pass)
_PERSON_HINTS = ("ame", "egards", "incerely", "heers", "alled", "Mr", "Ms", "Mx", "Dr", "Prof",
                 "Miss")  # fmt: skip

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}\b"
)
# contiguous, in groups of four (Visa, Mastercard, Discover...) or 4-6-5 (Amex): a digit
# list such as "12 5 33 7" is not a card number whatever its checksum
_CARD = re.compile(
    r"(?<![\d.,-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}|\d{4}([ -])\d{6}\2\d{4,5})"
    r"(?![\d]|[.,-]\d)"
)
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(
    rf"(?<![\w.])(?<!version )(?<!release )(?<!v\. ){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d|\w)"
)
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}|:)?(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")
_PHONE = re.compile(
    # international: +CC then groups; national with a trunk 0; North American
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
    r"|\(0\d{1,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}"
    r"|0\d{1,4}[ -]\d{3,4}[ -]?\d{3,4}"
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"
    r"|\d{3}[.-]\d{3}[.-]\d{4}"
    r")(?![\w]|[.-]\d)"
)
_SUFFIXES = (
    "Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|"
    "Place|Pl|Terrace|Square|Sq|Parkway|Pkwy|Highway|Hwy|Circle|Cir|Crescent|Close"
)
_STREET = re.compile(
    rf"\b\d{{1,5}}[A-Za-z]?,?[ \t]+(?:[A-Z][a-z]+\.?[ \t]+){{1,3}}(?:{_SUFFIXES})\b\.?"
    r"(?:,?\s+(?:Apt|Apartment|Suite|Unit|Flat)\.?\s*#?\w{1,5})?"
)
_NAME_WORD = r"[A-Z][a-z]+(?:[-'’][A-Z]?[a-z]+)?"
_PERSON = re.compile(
    r"(?:\b(?:[Mm]y (?:full )?name is|[Mm]y name's|I'm called|I am called|"
    r"(?:[Ff]ull |[Cc]ustomer |[Pp]atient )?[Nn]ame\s*:|[Ss]incerely,|[Rr]egards,|"
    r"[Cc]heers,)\s*"
    r"|\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\.?\s+)"
    rf"(?P<name>{_NAME_WORD}(?:[ \t]+{_NAME_WORD}){{0,2}})"
)


@dataclass(frozen=True, slots=True)
class _Detector:
    kind: str
    pattern: re.Pattern[str]
    check: Callable[[str], bool] | None
    needs: str  # a cheap precondition: "number", "street", "@", "::", "person"
    group: str | int = 0


_DETECTORS: Final[tuple[_Detector, ...]] = (
    _Detector("email", _EMAIL, None, "@"),
    _Detector("bankAccount", _IBAN, _iban_ok, "number"),
    _Detector("creditCard", _CARD, _card_ok, "number"),
    _Detector("nationalId", _SSN, None, "number"),
    _Detector("ipAddress", _IPV4, _ipv4_ok, "number"),
    _Detector("ipAddress", _IPV6, _ipv6_ok, "::"),
    _Detector("phone", _PHONE, _phone_ok, "number"),
    _Detector("streetAddress", _STREET, None, "street"),
    _Detector("personName", _PERSON, None, "person", "name"),
)


_ALL_KINDS: Final = frozenset(KINDS)


def check_kinds(kinds: Collection[str] | None) -> frozenset[str]:
    """The kinds to look for (None or empty: all); unknown names are an error."""
    if not kinds:
        return _ALL_KINDS
    if isinstance(kinds, frozenset) and kinds <= _ALL_KINDS:
        return kinds
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown personal data kinds {sorted(unknown)}; known: {list(KINDS)}")
    return frozenset(kinds)


def _precondition(needs: str, text: str) -> bool:
    if needs == "number":
        return _NUMBERISH.search(text) is not None
    if needs == "street":
        return _STREET_HINT.search(text) is not None
    if needs == "person":
        return any(hint in text for hint in _PERSON_HINTS)
    if needs == "::":
        return text.count(":") >= 2
    return needs in text


@functools.lru_cache(maxsize=256)
def _detectors_for(wanted: frozenset[str]) -> tuple[_Detector, ...]:
    return tuple(det for det in _DETECTORS if det.kind in wanted)


def _candidates(text: str, wanted: frozenset[str]) -> Iterator[Finding]:
    met: dict[str, bool] = {}
    for det in _detectors_for(wanted):
        ok = met.get(det.needs)
        if ok is None:
            ok = met[det.needs] = _precondition(det.needs, text)
        if not ok:
            continue
        for match in det.pattern.finditer(text):
            start, end = match.span(det.group)
            if det.check is None or det.check(text[start:end]):
                yield Finding(det.kind, start, end)


#: one pass that every finding of any kind needs to match somewhere (the union of the
#: detectors' preconditions): most clean text is dismissed by it alone
_TRIGGER = re.compile(
    r"@|\d[\d .()/-]{4,}\d|\d[A-Za-z]?,?[ \t]+[A-Z]|:[0-9A-Fa-f]*:|"
    + "|".join(re.escape(hint) for hint in _PERSON_HINTS)
)


def find_personal_data(text: str, kinds: Collection[str] | None = None) -> list[Finding]:
    """The personal data in ``text``, in order, without overlaps (see KINDS' order)."""
    wanted = check_kinds(kinds)
    if _TRIGGER.search(text) is None:
        return []
    taken: list[Finding] = []
    for found in _candidates(text, wanted):  # detectors run in priority order
        if all(found.end <= t.start or found.start >= t.end for t in taken):
            taken.append(found)
    taken.sort(key=lambda f: f.start)
    return taken


def redact(text: str, kinds: Collection[str] | None = None) -> tuple[str, Counter[str]]:
    """``text`` with each finding replaced by its placeholder (``<EMAIL>``), and the
    number of findings per kind."""
    findings = find_personal_data(text, kinds)
    counts: Counter[str] = Counter()
    if not findings:
        return text, counts
    parts: list[str] = []
    pos = 0
    for f in findings:
        parts.append(text[pos : f.start])
        parts.append(PLACEHOLDERS[f.kind])
        counts[f.kind] += 1
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts), counts
