"""The plan line of the validation pod's termination message."""

from __future__ import annotations

from kubetune.contract.plan import MARKER, PlanSummary, encode_plan, parse_plan, without_plan


def test_round_trip_and_the_human_line_stays() -> None:
    plan = PlanSummary(peak_memory_bytes=123, fit="Fits", gpu="L4", suggestions=["a", "b"])
    message = "validation passed: x\n" + encode_plan(plan)
    assert parse_plan(message) == plan
    assert without_plan(message) == "validation passed: x"


def test_the_line_fits_its_budget_by_dropping_suggestions_last_first() -> None:
    plan = PlanSummary(peak_memory_bytes=1, suggestions=[f"{i}: " + "x" * 230 for i in range(5)])
    line = encode_plan(plan, budget=700)
    assert len(line.encode()) <= 700 and line.startswith(MARKER)
    parsed = parse_plan(line)
    assert parsed is not None and 0 < len(parsed.suggestions) < 5
    assert parsed.suggestions[0].startswith("0: ")


def test_garbage_is_no_plan() -> None:
    assert parse_plan(None) is None
    assert parse_plan(MARKER + '{"peakMemoryBytes": -1}') is None
