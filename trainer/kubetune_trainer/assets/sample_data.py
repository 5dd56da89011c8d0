"""Deterministic synthetic datasets in the four formats (tests, benchmarks, the demo).

The tasks are small, rule-based and learnable by a tiny model — spell out numbers,
reverse a word list, sort numbers, count items — so losses fall visibly within a few
dozen steps, and lengths vary widely (a handful to several hundred tokens), which is
what makes padding expensive and packing worthwhile. Preference pairs put the correct
answer against a corrupted one.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_NOUNS = [
    "apple",
    "river",
    "cloud",
    "stone",
    "lamp",
    "garden",
    "rocket",
    "violin",
    "pencil",
    "forest",
    "candle",
    "mirror",
    "engine",
    "window",
    "basket",
    "harbor",
    "planet",
    "ladder",
    "marble",
    "ticket",
]
SYSTEM_PROMPT = "You are a precise assistant. Answer with the result only."


def number_words(n: int) -> str:
    if n >= 100:
        hundreds, rest = divmod(n, 100)
        head = f"{_ONES[hundreds]} hundred"
        return head if rest == 0 else f"{head} and {number_words(rest)}"
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + ("" if ones == 0 else "-" + _ONES[ones])


TASKS = ("spell", "reverse", "sort", "count")


def _task(
    rng: random.Random, max_items: int, long_tail: bool = False, kinds: tuple[str, ...] = TASKS
) -> tuple[str, str, str]:
    """(instruction, correct answer, corrupted answer).

    ``long_tail`` draws the list length from a log-normal distribution (median ~8 items,
    occasionally 100+), like the heavy-tailed lengths of real chat datasets; otherwise
    it is uniform in 1..max_items.
    """
    kind = rng.choice(list(kinds))
    if long_tail:
        n = min(max_items, max(1, int(rng.lognormvariate(math.log(8), 1.0))))
    else:
        n = rng.randint(1, max_items)
    if kind == "spell":
        nums = [rng.randint(0, 99) for _ in range(n)]
        good = " ".join(number_words(x) for x in nums)
        bad = " ".join(number_words((x + rng.randint(1, 9)) % 100) for x in nums)
        return f"Spell out these numbers: {' '.join(map(str, nums))}", good, bad
    if kind == "reverse":
        words = [rng.choice(_NOUNS) for _ in range(n)]
        good = " ".join(reversed(words))
        shuffled = words[:]
        rng.shuffle(shuffled)
        bad = " ".join(shuffled) if shuffled != words[::-1] else " ".join([*words, "apple"])
        return f"Reverse these words: {' '.join(words)}", good, bad
    if kind == "sort":
        nums = [rng.randint(0, 99) for _ in range(n)]
        good = " ".join(map(str, sorted(nums)))
        bad = " ".join(map(str, sorted(nums, reverse=True))) if n > 1 else str(nums[0] + 1)
        return f"Sort these numbers: {' '.join(map(str, nums))}", good, bad
    words = [rng.choice(_NOUNS) for _ in range(n)]
    return (
        f"How many words are in this list: {' '.join(words)}",
        f"There are {number_words(n)} words.",
        f"There are {number_words(min(99, n + rng.randint(1, 5)))} words.",
    )


def chat_rows(
    count: int,
    seed: int = 0,
    max_items: int = 24,
    multi_turn: float = 0.2,
    long_tail: bool = False,
    kinds: tuple[str, ...] = TASKS,
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        messages: list[dict[str, str]] = []
        if rng.random() < 0.5:
            messages.append({"role": "system", "content": SYSTEM_PROMPT})
        turns = 2 if rng.random() < multi_turn else 1
        for _ in range(turns):
            prompt, answer, _ = _task(rng, max_items, long_tail, kinds)
            messages += [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": answer},
            ]
        rows.append({"messages": messages})
    return rows


def prompt_completion_rows(count: int, seed: int = 0, max_items: int = 24) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        prompt, answer, _ = _task(rng, max_items)
        rows.append({"prompt": f"{prompt}\nAnswer:", "completion": f" {answer}"})
    return rows


def text_rows(count: int, seed: int = 0, max_items: int = 24) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        prompt, answer, _ = _task(rng, max_items)
        rows.append({"text": f"{prompt}. Result: {answer}."})
    return rows


def chatml_prompt(instruction: str) -> str:
    """A user turn rendered with the tiny models' ChatML template, ready for the answer."""
    return f"<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n"


def user_prompt(row: dict[str, Any]) -> str:
    """The (last) user instruction of a chat row or of a rendered evaluation prompt."""
    if "messages" in row:
        return str([m for m in row["messages"] if m["role"] == "user"][-1]["content"])
    text = str(row["prompt"])
    return text.rsplit("<|im_start|>user\n", 1)[-1].split("<|im_end|>", 1)[0]


def prompt_reference_rows(
    count: int, seed: int = 0, max_items: int = 3, kinds: tuple[str, ...] = TASKS
) -> list[dict[str, Any]]:
    """An evaluation set (``spec.evaluation.sets``): rendered chat prompts and their answers."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        prompt, answer, _ = _task(rng, max_items, kinds=kinds)
        rows.append({"prompt": chatml_prompt(prompt), "reference": answer})
    return rows


def preference_rows(
    count: int, seed: int = 0, max_items: int = 12, conversational: bool = False
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for _ in range(count):
        prompt, good, bad = _task(rng, max_items)
        if conversational:
            rows.append(
                {
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": good}],
                    "rejected": [{"role": "assistant", "content": bad}],
                }
            )
        else:
            rows.append(
                {"prompt": f"{prompt}\nAnswer:", "chosen": f" {good}", "rejected": f" {bad}"}
            )
    return rows


def count_prompt_rows(count: int, seed: int = 0, max_items: int = 6) -> list[dict[str, Any]]:
    """Prompts for online RL with a verifiable answer: count the words, answer in digits."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for _ in range(count):
        n = rng.randint(1, max_items)
        words = " ".join(rng.choice(_NOUNS) for _ in range(n))
        rows.append(
            {"prompt": f"How many words are in this list: {words}\nAnswer:", "answer": str(n)}
        )
    return rows


def unpaired_rows(count: int, seed: int = 0, max_items: int = 12) -> list[dict[str, Any]]:
    """KTO rows: each task's right answer (label true) or wrong one (false), alternating."""
    rows = []
    for index, pair in enumerate(preference_rows(count, seed=seed, max_items=max_items)):
        desirable = index % 2 == 0
        completion = pair["chosen"] if desirable else pair["rejected"]
        rows.append({"prompt": pair["prompt"], "completion": completion, "label": desirable})
    return rows


GENERATORS = {
    "chat": chat_rows,
    "promptCompletion": prompt_completion_rows,
    "text": text_rows,
    "preference": preference_rows,
    "promptOnly": count_prompt_rows,
    "unpaired": unpaired_rows,
}


def write_jsonl(rows: Iterable[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def corpus_from_rows(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Text of rows in any format, for training a tokenizer that covers the data."""
    out: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    for row in rows:
        walk(row)
    return out
