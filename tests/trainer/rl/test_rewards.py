"""Verifiable rewards, score shaping and running normalisation, on hand-checked cases."""

from __future__ import annotations

import math

import pytest
import torch

from kubetune_trainer.rl.rewards import (
    ExactMatch,
    NumericAnswer,
    RegexMatch,
    RunningMoments,
    ValidJson,
    VerifiableReward,
    last_number,
    normalize_scores,
    shaped_scores,
)


def test_rewards_follow_the_protocol() -> None:
    for reward in (ExactMatch(), RegexMatch("x"), ValidJson(), NumericAnswer()):
        assert isinstance(reward, VerifiableReward)


def test_exact_match() -> None:
    assert ExactMatch().score("  Paris \n", "paris") == 1.0
    assert ExactMatch().score("New   York", "new york") == 1.0
    assert ExactMatch().score("Paris.", "Paris") == 0.0
    assert ExactMatch(normalize=False).score("Paris ", "Paris") == 0.0
    assert ExactMatch(normalize=False).score("Paris", "Paris") == 1.0
    with pytest.raises(ValueError, match="reference"):
        ExactMatch().score("Paris", None)


def test_regex_search_vs_full_match() -> None:
    assert RegexMatch(r"\d+").score("the answer is 42", None) == 1.0
    assert RegexMatch(r"\d+", full_match=True).score("the answer is 42", None) == 0.0
    assert RegexMatch(r"\d+", full_match=True).score("42", None) == 1.0
    assert RegexMatch(r"^yes$").score("no", None) == 0.0


def test_regex_invalid_pattern_names_it() -> None:
    with pytest.raises(ValueError, match=r"\(unclosed"):
        RegexMatch("(unclosed")


def test_regex_only_reads_the_tail_of_long_responses() -> None:
    reward = RegexMatch("42", max_chars=100)
    assert reward.score("42" + "x" * 200, None) == 0.0  # outside the last 100 characters
    assert reward.score("x" * 200 + "42", None) == 1.0
    assert RegexMatch(".*", full_match=True, max_chars=100).score("x" * 101, None) == 0.0


def test_valid_json() -> None:
    assert ValidJson(("a", "b")).score('{"a": 1, "b": null}', None) == 1.0
    assert ValidJson(("a", "b")).score('{"a": 1}', None) == 0.0
    assert ValidJson().score("[1, 2]", None) == 0.0  # not an object
    assert ValidJson().score("{'a': 1}", None) == 0.0  # Python, not JSON
    assert ValidJson().score("not json", None) == 0.0
    fenced = '```json\n{"answer": 3}\n```\n'
    assert ValidJson(("answer",)).score(fenced, None) == 1.0
    assert ValidJson(("answer",)).score('```\n{"answer": 3}\n```', None) == 1.0
    assert ValidJson(("answer",)).score('```json {"answer": 3} ```', None) == 1.0
    # prose around the block: the response is not "the JSON"
    assert ValidJson().score('Here it is:\n```json\n{"a": 1}\n```', None) == 0.0
    assert ValidJson().score("[" * 100_000, None) == 0.0  # deep nesting does not crash


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("The total is 1,234.5", 1234.5),
        ("1234.5", 1234.5),
        ("so x = -3/4", -0.75),
        ("3/4", 0.75),
        ("first 7, then 12.", 12.0),
        ("5-3", 3.0),  # a minus glued to a number is an operator, not a sign
        ("costs $1,000,000", 1_000_000.0),
        ("\u22122.5", -2.5),  # Unicode minus
        ("about .5", 0.5),
        ("1, 2, 3", 3.0),  # a list, not thousands separators
        ("no digits here", None),
        ("1/0", None),
    ],
)
def test_last_number(text: str, value: float | None) -> None:
    assert last_number(text) == value


def test_numeric_answer() -> None:
    reward = NumericAnswer()
    assert reward.score("Step 1: 2 + 3 = 5. Answer: 1,234.5", "1234.5") == 1.0
    assert reward.score("Answer: 1234.6", "1,234.5") == 0.0
    assert reward.score("-3/4", "-0.75") == 1.0
    assert reward.score("3/4", "-0.75") == 0.0
    assert reward.score("7 then 12", "7") == 0.0  # the last number counts
    assert reward.score("I don't know", "7") == 0.0
    assert NumericAnswer(tolerance=1e-3).score("0.3333", "1/3") == 1.0
    assert reward.score("0.3333", "1/3") == 0.0
    assert NumericAnswer(tolerance=1e-5, relative=True).score("1000001", "1000000") == 1.0
    assert NumericAnswer(tolerance=1e-5, relative=False).score("1000001", "1000000") == 0.0
    with pytest.raises(ValueError, match="reference"):
        reward.score("1", None)
    with pytest.raises(ValueError, match="no number"):
        reward.score("1", "none")


def test_shaped_scores_by_hand() -> None:
    scores = torch.tensor([1.0, 0.5, 0.8, 0.2])
    lengths = torch.tensor([10, 30, 25, 5])
    eos = torch.tensor([True, True, False, False])
    # row 0: 1.0                      (has EOS, 10 <= 20 tokens)
    # row 1: 0.5 - 0.01 * 10 = 0.4    (10 tokens over)
    # row 2: 0.8 - 1.0 - 0.01 * 5 = -0.25
    # row 3: 0.2 - 1.0 = -0.8
    kwargs = {"missing_eos_penalty": 1.0, "length_penalty": 0.01, "target_length": 20}
    out = shaped_scores(scores, lengths, eos, **kwargs)  # type: ignore[arg-type]
    assert torch.allclose(out, torch.tensor([1.0, 0.4, -0.25, -0.8]))
    clipped = shaped_scores(scores, lengths, eos, clip=0.5, **kwargs)  # type: ignore[arg-type]
    assert torch.allclose(clipped, torch.tensor([0.5, 0.4, -0.25, -0.5]))
    assert torch.equal(scores, torch.tensor([1.0, 0.5, 0.8, 0.2]))  # input untouched
    assert torch.equal(shaped_scores(scores, lengths, eos), scores)  # no shaping asked
    with pytest.raises(ValueError, match="target_length"):
        shaped_scores(scores, lengths, eos, length_penalty=0.1)


def test_running_moments_equal_the_concatenated_data() -> None:
    g = torch.Generator().manual_seed(0)
    batches = [
        torch.randn(n, generator=g) * s + m
        for n, s, m in [(5, 1, 0), (1, 1, 3), (8, 4, -2), (3, 0.5, 10)]
    ]
    moments = RunningMoments()
    for batch in batches:
        batch_mean, batch_std = moments.update(batch)
        assert batch_mean == pytest.approx(batch.double().mean().item())
        if batch.numel() > 1:
            assert batch_std == pytest.approx(batch.double().std().item())
        else:
            assert math.isnan(batch_std)
    everything = torch.cat(batches).double()
    assert moments.count == everything.numel()
    assert moments.mean == pytest.approx(everything.mean().item(), rel=1e-12)
    assert moments.std == pytest.approx(everything.std().item(), rel=1e-12)  # unbiased


def test_running_moments_state_round_trip() -> None:
    a = RunningMoments()
    a.update(torch.tensor([1.0, 2.0, 4.0]))
    b = RunningMoments()
    b.load_state_dict(a.state_dict())
    a.update(torch.tensor([8.0, -1.0]))
    b.update(torch.tensor([8.0, -1.0]))
    assert (a.mean, a.std, a.count) == (b.mean, b.std, b.count)


def test_normalize_scores() -> None:
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    moments = RunningMoments()
    assert torch.allclose(normalize_scores(scores, moments), scores)  # nothing seen: identity
    moments.update(scores)
    std = math.sqrt(5 / 3)  # unbiased std of 1..4; mean 2.5
    expected = torch.tensor([-1.5, -0.5, 0.5, 1.5]) / std
    assert torch.allclose(normalize_scores(scores, moments), expected)
    assert torch.allclose(normalize_scores(scores, moments, center=False), scores / std)
