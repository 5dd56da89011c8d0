"""Figures as people read them: counts as integers, durations in human units."""

from __future__ import annotations

import math

import pytest

from kubetune.contract.display import duration, number


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (591.0, "591"),
        (22340.0, "22,340"),
        (24, "24"),
        (1_234_567, "1,234,567"),
        (3.0, "3"),
        (1.2, "1.2"),
        (0.123456, "0.1235"),
        (6.917423, "6.917"),
        (2.5e-05, "2.5e-05"),
        (-0.0, "0"),
        (12345.678, "12,346"),
        (math.nan, "n/a"),
        (math.inf, "inf"),
        (True, "True"),
        ("n/a", "n/a"),
    ],
)
def test_number(value: object, shown: str) -> None:
    assert number(value) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.42, "0.42 s"),
        (8.703, "8.7 s"),
        (59.94, "59.9 s"),
        (125.2, "2 min 05 s"),
        (3599.6, "1 h 00 min"),
        (3780, "1 h 03 min"),
        (None, "n/a"),
        (math.nan, "n/a"),
    ],
)
def test_duration(seconds: float | None, shown: str) -> None:
    assert duration(seconds) == shown
