"""Build preference pairs and KTO examples from served feedback and human reviews.

Input rows (a feedback log line, or a review file row; docs/feedback-loop.md):

- ``prompt``: a string, or chat messages ``[{"role", "content"}, ...]``;
- ``response`` (or ``completion``): the answer that was judged;
- ``rating``: ``"positive"``/``"negative"`` (also ``"up"``/``"down"``, true/false), or an
  integer 1-5; ``score``: an integer 1-5;
- ``correction``: the answer that should have been given;
- ``reviewer`` (review files): who reviewed; read to mark the row as a review, never
  written out.

The rules, in order:

1. A row without a prompt or a response is dropped as ``empty``; one that cannot be read
   as ``invalid``; one with no rating, score or correction as ``unrated``.
2. The personal-data policy runs on every text (each prompt message, the response, the
   correction): ``redact`` replaces what the scrubber finds, ``drop`` drops the row when
   it finds anything (``personal_data``), ``allow`` leaves the text alone.
3. Each row becomes judgements of (prompt, response): the response is desirable when its
   score is at least ``positive_at`` (4) or its thumb is up, undesirable when the score is
   at most ``negative_at`` (2) or the thumb is down; a score in between is neutral. A
   correction makes the original response undesirable, whatever its rating, and adds the
   correction itself as a desirable response to the same prompt.
4. Judgements of the same prompt and response (whitespace normalised) are merged: a
   human review outranks served feedback (the others are dropped as ``superseded``);
   among the rest, the copies beyond the first are ``duplicate``; when they disagree on
   the label, ``conflicts="drop"`` (default) drops them all as ``conflicting``, and
   ``"majority"`` keeps the majority label (a tie is dropped). Scores are averaged.
5. ``unpaired.jsonl``: every merged response with a label (neutral ones are counted as
   ``neutral`` and left out). ``preference.jsonl``: for each prompt, response A is chosen
   over B when A is desirable and B undesirable, or both have scores and A's is higher
   by at least ``min_score_gap``; at most ``max_pairs_per_prompt`` pairs per prompt, the
   widest first (the rest are counted as ``pairs_capped``).

The report holds counts only, never content.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kubetune_trainer.data.formats import RowError, parse_row

Prompt = str | list[dict[str, str]]
#: ``text -> (text with personal data replaced, count per kind)``, as
#: ``kubetune_trainer.privacy.redact(text)`` returns it.
Scrubber = Callable[[str], tuple[str, Counter[str]]]
PersonalDataPolicy = Literal["redact", "drop", "allow"]
ConflictRule = Literal["drop", "majority"]

PREFERENCE_FILE = "preference.jsonl"
UNPAIRED_FILE = "unpaired.jsonl"
REPORT_FILE = "report.json"
#: Reasons a judgement can be dropped, in the order the report lists them.
DROP_REASONS = (
    "invalid",
    "empty",
    "unrated",
    "personal_data",
    "superseded",
    "duplicate",
    "conflicting",
    "neutral",
)
THUMBS = {
    "positive": True,
    "up": True,
    "thumbs_up": True,
    "negative": False,
    "down": False,
    "thumbs_down": False,
}


def default_scrubber() -> Scrubber:
    """The personal-data scrubber every build uses unless a caller passes its own: the
    same detector as ``spec.dataPolicy.personalData`` (kubetune_trainer.privacy)."""
    from kubetune_trainer.privacy import redact

    return redact


@dataclass(frozen=True)
class BuildOptions:
    positive_at: int = 4
    negative_at: int = 2
    conflicts: ConflictRule = "drop"
    personal_data: PersonalDataPolicy = "redact"
    max_pairs_per_prompt: int = 8
    min_score_gap: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.negative_at < self.positive_at <= 5:
            raise ValueError("need 1 <= negative_at < positive_at <= 5")
        if self.conflicts not in ("drop", "majority"):
            raise ValueError("conflicts must be drop or majority")
        if self.personal_data not in ("redact", "drop", "allow"):
            raise ValueError("personal_data must be redact, drop or allow")
        if self.max_pairs_per_prompt < 1 or self.min_score_gap < 1:
            raise ValueError("max_pairs_per_prompt and min_score_gap must be >= 1")


@dataclass
class BuildReport:
    """Counts only: what was read, kept and dropped, and personal data found per kind."""

    rows_read: dict[str, int] = field(default_factory=lambda: {"feedback": 0, "reviews": 0})
    judgements: int = 0
    kept: dict[str, int] = field(default_factory=lambda: {"preference": 0, "unpaired": 0})
    unpaired_labels: dict[str, int] = field(default_factory=lambda: {"true": 0, "false": 0})
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    pairs_capped: int = 0
    personal_data_policy: str = "redact"
    personal_data: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "rowsRead": dict(self.rows_read),
            "judgements": self.judgements,
            "kept": dict(self.kept),
            "unpairedLabels": dict(self.unpaired_labels),
            "dropped": dict(self.dropped),
            "pairsCapped": self.pairs_capped,
            "personalData": {
                "policy": self.personal_data_policy,
                "foundPerKind": dict(sorted(self.personal_data.items())),
            },
        }

    def table(self) -> list[tuple[str, str]]:
        """(what, count) rows for a printed table."""
        rows = [(f"rows read: {k}", str(v)) for k, v in self.rows_read.items()]
        rows.append(("judgements", str(self.judgements)))
        rows += [(f"kept: {k}", str(v)) for k, v in self.kept.items()]
        rows += [(f"unpaired label {k}", str(v)) for k, v in self.unpaired_labels.items()]
        rows += [(f"dropped: {k}", str(v)) for k, v in self.dropped.items()]
        rows.append(("pairs over the per-prompt cap", str(self.pairs_capped)))
        verb = {"redact": "redacted", "drop": "found (rows dropped)", "allow": "not checked"}
        policy = self.personal_data_policy
        rows.append((f"personal data ({policy})", verb[policy]))
        rows += [(f"  {kind}", str(n)) for kind, n in sorted(self.personal_data.items())]
        return rows


@dataclass(frozen=True)
class Judgement:
    """One judged response to one prompt, after the personal-data policy."""

    prompt: Prompt
    response: str
    label: bool | None
    score: float | None
    review: bool


class RowProblem(ValueError):
    """A row dropped for ``reason`` (one of DROP_REASONS)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ----- reading ---------------------------------------------------------------------------


def read_rows(path: Path) -> Iterator[dict[str, Any] | None]:
    """The rows of a JSONL or (``.csv``) CSV file; None for a line that is not an object."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                yield {k: (v if v != "" else None) for k, v in row.items() if k}
        return
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                yield None
                continue
            yield row if isinstance(row, dict) else None


def _prompt(value: Any) -> Prompt:
    if isinstance(value, str):
        if not value.strip():
            raise RowProblem("empty")
        return value
    if isinstance(value, list) and value:
        messages = []
        for m in value:
            if not isinstance(m, Mapping) or not isinstance(m.get("content"), str):
                raise RowProblem("invalid")
            if m.get("role") not in ("system", "user", "assistant", "tool"):
                raise RowProblem("invalid")
            messages.append({"role": str(m["role"]), "content": str(m["content"])})
        if not any(m["content"].strip() for m in messages):
            raise RowProblem("empty")
        return messages
    if value is None or value == []:
        raise RowProblem("empty")
    raise RowProblem("invalid")


def _score(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
        raise RowProblem("invalid")
    return value


def _thumb(value: Any) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in THUMBS:
        return THUMBS[value.strip().lower()]
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise RowProblem("invalid")


def parse_judged_row(
    row: Mapping[str, Any], options: BuildOptions
) -> tuple[Prompt, str, bool | None, int | None, str | None]:
    """(prompt, response, label, score, correction) of one input row; RowProblem if unusable."""
    prompt = _prompt(row.get("prompt"))
    response = row.get("response", row.get("completion"))
    if response is None or (isinstance(response, str) and not response.strip()):
        raise RowProblem("empty")
    if not isinstance(response, str):
        raise RowProblem("invalid")
    rating = row.get("rating")
    score = _score(row.get("score"))
    if isinstance(rating, int | str) and not isinstance(rating, bool) and _is_score(rating):
        rated = _score(rating)
        if score is not None and rated != score:
            raise RowProblem("invalid")
        score, rating = rated, None
    thumb = _thumb(rating if rating is not None else row.get("thumb"))
    correction = row.get("correction")
    if correction is not None and not isinstance(correction, str):
        raise RowProblem("invalid")
    if correction is not None and (not correction.strip() or _norm(correction) == _norm(response)):
        correction = None  # an empty or unchanged "correction" corrects nothing
    label: bool | None = thumb
    if score is not None:
        by_score = (
            True
            if score >= options.positive_at
            else False
            if score <= options.negative_at
            else None
        )
        if thumb is not None and by_score is not None and thumb != by_score:
            raise RowProblem("invalid")  # a thumb that contradicts the score: not guessed
        label = by_score if by_score is not None else thumb
    if correction is not None:
        label = False  # the user had to fix it: the original is the rejected answer
    if label is None and score is None:
        raise RowProblem("unrated")
    return prompt, response, label, score, correction


def _is_score(value: int | str) -> bool:
    return isinstance(value, int) or value.strip().isdigit()


# ----- personal data ---------------------------------------------------------------------


def _scrub_all(
    texts: Sequence[str], scrubber: Scrubber | None, policy: PersonalDataPolicy, found: Counter[str]
) -> list[str]:
    if policy == "allow" or scrubber is None:
        return list(texts)
    out = []
    seen: Counter[str] = Counter()
    for text in texts:
        clean, counts = scrubber(text)
        seen.update(counts)
        out.append(clean)
    found.update(seen)
    if policy == "drop" and sum(seen.values()) > 0:
        raise RowProblem("personal_data")
    return out


def _scrubbed(
    prompt: Prompt,
    response: str,
    correction: str | None,
    scrubber: Scrubber | None,
    policy: PersonalDataPolicy,
    found: Counter[str],
) -> tuple[Prompt, str, str | None]:
    contents = [prompt] if isinstance(prompt, str) else [m["content"] for m in prompt]
    texts = [*contents, response, *([correction] if correction is not None else [])]
    clean = _scrub_all(texts, scrubber, policy, found)
    if isinstance(prompt, str):
        new_prompt: Prompt = clean[0]
    else:
        new_prompt = [
            {"role": m["role"], "content": c} for m, c in zip(prompt, clean, strict=False)
        ]
    rest = clean[len(contents) :]
    return new_prompt, rest[0], (rest[1] if correction is not None else None)


# ----- merging and pairing ---------------------------------------------------------------


def _norm(text: str) -> str:
    return " ".join(text.split())


def prompt_key(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return _norm(prompt)
    return json.dumps([[m["role"], _norm(m["content"])] for m in prompt])


@dataclass
class Merged:
    prompt: Prompt
    response: str
    label: bool | None
    score: float | None
    order: int


def _merge(
    judgements: Iterable[Judgement], options: BuildOptions, report: BuildReport
) -> list[Merged]:
    groups: dict[tuple[str, str], list[Judgement]] = {}
    for j in judgements:
        groups.setdefault((prompt_key(j.prompt), _norm(j.response)), []).append(j)
    merged = []
    for order, group in enumerate(groups.values()):
        if any(j.review for j in group):
            report.dropped["superseded"] += sum(not j.review for j in group)
            group = [j for j in group if j.review]
        labels = Counter(j.label for j in group if j.label is not None)
        label: bool | None = None
        if len(labels) == 2:
            if options.conflicts == "drop" or labels[True] == labels[False]:
                report.dropped["conflicting"] += len(group)
                continue
            label = labels[True] > labels[False]
            report.dropped["conflicting"] += min(labels.values())
            report.dropped["duplicate"] += len(group) - 1 - min(labels.values())
        else:
            label = next(iter(labels), None)
            report.dropped["duplicate"] += len(group) - 1
        scores = [j.score for j in group if j.score is not None]
        score = sum(scores) / len(scores) if scores else None
        first = group[0]
        merged.append(Merged(first.prompt, first.response, label, score, order))
    return merged


def _strength(m: Merged) -> float:
    if m.score is not None:
        return m.score
    return {True: 4.5, False: 1.5, None: 3.0}[m.label]


def _prefers(a: Merged, b: Merged, options: BuildOptions) -> bool:
    if a.label is True and b.label is False:
        return True
    if a.score is not None and b.score is not None:
        return a.score - b.score >= options.min_score_gap
    return False


def _pairs(
    merged: Sequence[Merged], options: BuildOptions, report: BuildReport
) -> list[tuple[Merged, Merged]]:
    by_prompt: dict[str, list[Merged]] = {}
    for m in merged:
        by_prompt.setdefault(prompt_key(m.prompt), []).append(m)
    pairs = []
    for group in by_prompt.values():
        best = sorted(group, key=lambda m: (-_strength(m), m.order))
        worst = sorted(group, key=lambda m: (_strength(m), m.order))
        found = [(a, b) for a in best for b in worst if a is not b and _prefers(a, b, options)]
        # the widest gaps first, then first seen
        found.sort(key=lambda p: (-(_strength(p[0]) - _strength(p[1])), p[0].order, p[1].order))
        pairs += found[: options.max_pairs_per_prompt]
        report.pairs_capped += max(0, len(found) - options.max_pairs_per_prompt)
    return pairs


def _answer(prompt: Prompt, text: str) -> str | list[dict[str, str]]:
    """A response in the prompt's form: a string, or one assistant message."""
    return text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]


# ----- the build -------------------------------------------------------------------------


def _atomic_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def collect(
    feedback: Sequence[Path],
    reviews: Sequence[Path],
    options: BuildOptions,
    scrubber: Scrubber | None,
    report: BuildReport,
) -> list[Judgement]:
    """Every usable judgement of the input files, the personal-data policy applied."""
    found: Counter[str] = Counter()
    judgements: list[Judgement] = []
    sources = [(p, False) for p in feedback] + [(p, True) for p in reviews]
    for path, is_review in sources:
        for row in read_rows(path):
            report.rows_read["reviews" if is_review else "feedback"] += 1
            try:
                if row is None:
                    raise RowProblem("invalid")
                prompt, response, label, score, correction = parse_judged_row(row, options)
                prompt, response, correction = _scrubbed(
                    prompt, response, correction, scrubber, options.personal_data, found
                )
            except RowProblem as problem:
                report.judgements += 1
                report.dropped[problem.reason] += 1
                continue
            judgements.append(Judgement(prompt, response, label, score, is_review))
            if correction is not None:
                judgements.append(Judgement(prompt, correction, True, None, is_review))
            report.judgements += 1 + (correction is not None)
    report.personal_data = dict(found)
    return judgements


def build(
    out_dir: Path,
    feedback: Sequence[Path] = (),
    reviews: Sequence[Path] = (),
    options: BuildOptions | None = None,
    scrubber: Scrubber | None = None,
) -> BuildReport:
    """Write preference.jsonl, unpaired.jsonl and report.json into ``out_dir``.

    ``scrubber`` defaults to :func:`default_scrubber` unless the policy is ``allow``.
    """
    options = options or BuildOptions()
    if options.personal_data != "allow" and scrubber is None:
        scrubber = default_scrubber()
    report = BuildReport(personal_data_policy=options.personal_data)
    merged = _merge(collect(feedback, reviews, options, scrubber, report), options, report)

    unpaired = []
    for m in merged:
        if m.label is None:
            report.dropped["neutral"] += 1
            continue
        row = {"prompt": m.prompt, "completion": _answer(m.prompt, m.response), "label": m.label}
        if _valid("unpaired", row, report):
            unpaired.append(row)
            report.unpaired_labels["true" if m.label else "false"] += 1
    preference = []
    for chosen, rejected in _pairs(merged, options, report):
        row = {
            "prompt": chosen.prompt,
            "chosen": _answer(chosen.prompt, chosen.response),
            "rejected": _answer(chosen.prompt, rejected.response),
        }
        if _valid("preference", row, report):
            preference.append(row)
    report.kept = {"preference": len(preference), "unpaired": len(unpaired)}

    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_jsonl(out_dir / PREFERENCE_FILE, preference)
    _atomic_jsonl(out_dir / UNPAIRED_FILE, unpaired)
    (out_dir / REPORT_FILE).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return report


def _valid(fmt: str, row: Mapping[str, Any], report: BuildReport) -> bool:
    """The trainer's own row check, so a built file never fails a job's data validation."""
    try:
        parse_row(fmt, row, None)
    except RowError:
        report.dropped["invalid"] += 1
        return False
    return True
