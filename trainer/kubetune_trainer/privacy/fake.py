"""Fake personal data for examples, tests and the benchmark: realistic in form, owned by
no one (reserved example domains, 555 and test-net numbers, card test numbers, IBANs
and SSNs built from random digits with valid checks)."""

from __future__ import annotations

import random
from typing import Any

FIRST_NAMES = ("Ana", "John", "Mei", "Olu", "Priya", "Lars", "Sofia", "Omar", "Keiko", "Liam")
LAST_NAMES = ("Lima", "Smith", "Chen", "Adeyemi", "Patel", "Berg", "Rossi", "Haddad", "Ito")
STREETS = ("Baker", "Maple", "Elm", "Harbour", "Station", "Mill", "Church", "Oak Hill")
SUFFIXES = ("Street", "Avenue", "Road", "Lane", "Drive", "St", "Ave")


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    from kubetune_trainer.privacy.detect import luhn_valid

    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


def fake_iban(rng: random.Random) -> str:
    bban = "".join(rng.choice("0123456789") for _ in range(18))  # DE: 8 bank + 10 account
    number = int("".join(str(int(c, 36)) for c in bban + "DE00"))
    iban = f"DE{98 - number % 97:02d}{bban}"
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))


def fake_values(rng: random.Random) -> dict[str, str]:
    """One fake value of each kind."""
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    card = _luhn_complete(rng.choice(("4", "51", "6011")), 16, rng)
    return {
        "personName": f"{first} {last}",
        "email": f"{first.lower()}.{last.lower()}{rng.randint(1, 99)}@example.com",
        "phone": rng.choice(
            (
                f"+1 555 010 {rng.randint(1000, 9999)}",
                f"(555) 010-{rng.randint(1000, 9999)}",
                f"+44 20 7946 0{rng.randint(100, 999)}",
            )
        ),
        "creditCard": " ".join(card[i : i + 4] for i in range(0, 16, 4)),
        "bankAccount": fake_iban(rng),
        "nationalId": f"{rng.randint(100, 665)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}",
        "ipAddress": f"192.0.2.{rng.randint(1, 254)}",
        "streetAddress": f"{rng.randint(1, 999)} {rng.choice(STREETS)} {rng.choice(SUFFIXES)}",
    }


_TEMPLATES = (
    ("Hi, my name is {personName}. Please send the invoice to {email}.",
     "Thank you. The invoice is on its way to the address on file."),
    ("Can you call me back on {phone}? It's about my order.",
     "Of course, someone will call you back today."),
    ("My card {creditCard} was charged twice.",
     "Sorry about that. I have opened a refund for the second charge."),
    ("Please pay the refund into {bankAccount}.",
     "Done: the refund will arrive within three working days."),
    ("For the tax form, my SSN is {nationalId}.",
     "Thanks, please upload the form through the secure portal instead."),
    ("I can't log in from {ipAddress}, is it blocked?",
     "The address was blocked after five failed attempts; it is unblocked now."),
    ("Please update my address to {streetAddress}.",
     "Your delivery address has been updated."),
    ("Name: {personName}\nEmail: {email}\nIssue: the app crashes on start.",
     "Thanks for the report. Please try reinstalling the app."),
)  # fmt: skip
_CLEAN = (
    ("How do I reset my password?", "Open Settings, then Account, then Reset password."),
    ("What are your opening hours?", "We are open from 9:00 to 17:30, Monday to Friday."),
    ("Is version 2.4.1 compatible with Android 14?", "Yes, 2.4.1 supports Android 14."),
    ("My order from 2024-03-15 hasn't arrived.", "It left our warehouse on 2024-03-17."),
    ("How much is the premium plan?", "The premium plan costs 12.99 per month."),
)


def pii_chat_rows(count: int, seed: int = 0, share: float = 0.5) -> list[dict[str, Any]]:
    """Short support chats; about ``share`` of them contain fake personal data."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        if rng.random() < share:
            user, answer = rng.choice(_TEMPLATES)
            user = user.format(**fake_values(rng))
        else:
            user, answer = rng.choice(_CLEAN)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return rows
