"""Run ``spec.evaluation`` on rank 0 after training and record the verdict.

The tuned model is the trained module itself; the baseline is the same module with the
method's ``base_behaviour`` (PEFT: adapter off) when it is the job's base model and the
method has such a switch, else a second model loaded from its location. Held-out
loss/perplexity come from the trainer's distributed evaluation (done before and after
training), so they are not recomputed here; with the per-example sums of both runs (LM
objectives) their gates get a bootstrap interval, else point estimates.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api.evaluation import HELD_OUT, EvaluationSpec, metric_name
from kubetune.api.resolve import ResolvedJob
from kubetune.contract.evaluation import EvaluationSummary, summary_document
from kubetune_trainer.checkpoint.atomic import write_atomic
from kubetune_trainer.evaluation.data import Example, load_set
from kubetune_trainer.evaluation.gates import CorpusFigure, PairedScores, PairedSums, summarize
from kubetune_trainer.evaluation.generate import generate, reward_scores
from kubetune_trainer.evaluation.scoring import string_scorer
from kubetune_trainer.methods.base import Method
from kubetune_trainer.models.load import (
    load_causal_lm,
    load_tokenizer,
    resolve_model_dir,
)
from kubetune_trainer.outputs.model_card import render_model_card

if TYPE_CHECKING:
    from kubetune_trainer.distributed.strategy import Engine

log = logging.getLogger("kubetune.trainer")

EVALUATION_FILE = "evaluation.json"
#: Responses kept per set in evaluation.json, for a reviewer to read.
KEEP_RESPONSES = 20


#: [summed NLL, target tokens] per held-out example (the trainer's evaluate_examples)
ExampleRows = list[list[float]]


def paired_sums(base: ExampleRows | None, tuned: ExampleRows | None) -> PairedSums | None:
    """The two runs' per-example sums, or None unless they cover the same examples with the
    same target tokens (anything else would not be a paired comparison)."""
    if not base or not tuned or len(base) != len(tuned):
        return None
    if any(b[1] != t[1] for b, t in zip(base, tuned, strict=True)):
        return None
    return PairedSums([b[0] for b in base], [t[0] for t in tuned], [t[1] for t in tuned])


def held_out_figures(
    eval_results: dict[str, Any],
    held_out_examples: tuple[ExampleRows | None, ExampleRows | None] = (None, None),
) -> dict[str, CorpusFigure]:
    """heldOut/loss and heldOut/perplexity from the trainer's base vs. tuned evaluation, with
    the per-example sums of (base, tuned) when both are there."""
    base, tuned = eval_results.get("base") or {}, eval_results.get("tuned") or {}
    if not tuned:
        return {}
    tokens = tuned.get("tokens")
    sums = paired_sums(*held_out_examples)
    return {
        f"{HELD_OUT}/{key}": CorpusFigure(
            base.get(key), tuned.get(key), int(tokens) if tokens is not None else None, sums
        )
        for key in ("loss", "perplexity")
    }


def _overrides_base_behaviour(method: Method) -> bool:
    return type(method).base_behaviour is not Method.base_behaviour


@contextlib.contextmanager
def _baseline(
    job: ResolvedJob, spec: EvaluationSpec, method: Method, model: Any, tokenizer: Any
) -> Iterator[tuple[Any, Any]]:
    """(model, tokenizer) behaving as the baseline, for the duration of the block."""
    uri = spec.baseline or job.spec.model.uri
    if uri == job.spec.model.uri and _overrides_base_behaviour(method):
        with method.base_behaviour(model):
            yield model, tokenizer
        return
    revision = job.spec.model.revision if uri == job.spec.model.uri else None
    path = resolve_model_dir(uri, revision, what="baseline model")
    trust = job.spec.model.trust_remote_code
    other = load_causal_lm(path, dtype=next(model.parameters()).dtype, trust_remote_code=trust)
    other.to(next(model.parameters()).device)
    try:
        yield other, load_tokenizer(path, trust)
    finally:
        del other
        gc.collect()


def generation_model(engine: Engine, method: Method, model_dir: Path, output_dir: Path) -> Any:
    """The tuned model, whole, on rank 0: the trained module itself when the engine keeps
    full parameters on every rank (single, ddp), else what the outputs hold, reloaded."""
    if engine.name in ("single", "ddp"):
        return engine.unwrapped
    model = method.load_trained(model_dir, output_dir)
    return model.to(engine.env.device)


def _reward_model(uri: str, job: ResolvedJob) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification

    path = resolve_model_dir(uri, what="reward model")
    trust = job.spec.model.trust_remote_code
    model = AutoModelForSequenceClassification.from_pretrained(
        path, trust_remote_code=trust, use_safetensors=True
    )
    return model, load_tokenizer(path, trust)


def evaluate_sets(
    job: ResolvedJob, method: Method, model: Any, tokenizer: Any
) -> tuple[dict[str, PairedScores], dict[str, Any]]:
    """Per-example scores of every declared metric, and a sample of responses."""
    spec = job.spec.evaluation
    assert spec is not None
    sets = {s.name: load_set(s) for s in spec.sets}  # fail on bad data before generating
    tuned: dict[str, list[str]] = {}
    base: dict[str, list[str]] = {}
    for s in spec.sets:
        prompts = [e.prompt for e in sets[s.name]]
        tuned[s.name] = generate(
            model, tokenizer, prompts, max_new_tokens=s.max_new_tokens, seed=spec.seed
        )
    with _baseline(job, spec, method, model, tokenizer) as (bmodel, btok):
        for s in spec.sets:
            prompts = [e.prompt for e in sets[s.name]]
            base[s.name] = generate(
                bmodel, btok, prompts, max_new_tokens=s.max_new_tokens, seed=spec.seed
            )
    scores: dict[str, PairedScores] = {}
    rewards: dict[str, tuple[Any, Any]] = {}
    for s in spec.sets:
        examples: list[Example] = sets[s.name]
        prompts = [e.prompt for e in examples]
        refs = [e.reference for e in examples]
        for m in s.metrics:
            name = f"{s.name}/{metric_name(m)}"
            if m.type == "rewardModel":
                assert m.uri is not None
                if m.uri not in rewards:
                    rewards[m.uri] = _reward_model(m.uri, job)
                rmodel, rtok = rewards[m.uri]
                scores[name] = PairedScores(
                    reward_scores(rmodel, rtok, prompts, base[s.name]),
                    reward_scores(rmodel, rtok, prompts, tuned[s.name]),
                )
                continue
            score = string_scorer(m.type, m.pattern)
            scores[name] = PairedScores(
                [score(r, ref) for r, ref in zip(base[s.name], refs, strict=True)],
                [score(r, ref) for r, ref in zip(tuned[s.name], refs, strict=True)],
            )
    samples = {
        s.name: [
            {"prompt": e.prompt, "reference": e.reference, "baseline": b, "tuned": t}
            for e, b, t in list(zip(sets[s.name], base[s.name], tuned[s.name], strict=True))[
                :KEEP_RESPONSES
            ]
        ]
        for s in spec.sets
    }
    return scores, samples


def run_evaluation(
    job: ResolvedJob,
    *,
    method: Method,
    model: Any,
    tokenizer: Any,
    eval_results: dict[str, Any],
    output_dir: Path,
    held_out_examples: tuple[ExampleRows | None, ExampleRows | None] = (None, None),
) -> EvaluationSummary:
    """Evaluate, decide the gates, write evaluation.json and the card's section.

    Evaluation that cannot run (a missing set, a reward model that does not load) does
    not fail the training run: the summary says Failed with the reason and no gates, and
    the operator marks the model not promotable (EvaluationFailed). ``held_out_examples``
    is (base, tuned) per-example held-out sums, None where the trainer has none.
    """
    spec = job.spec.evaluation
    assert spec is not None
    baseline_uri = spec.baseline or job.spec.model.uri
    samples: dict[str, Any] = {}
    try:
        scores, samples = evaluate_sets(job, method, model, tokenizer)
        held_out = held_out_figures(eval_results, held_out_examples)
        summary = summarize(spec, baseline_uri, scores, held_out)
    except Exception as exc:  # recorded, not raised: the training itself succeeded
        log.exception("evaluation could not run")
        summary = EvaluationSummary(
            verdict="Failed",
            baseline=baseline_uri,
            confidence=spec.confidence,
            message=f"evaluation could not run: {type(exc).__name__}: {exc}"[:1000],
        )
    log.info("evaluation %s: %s", summary.verdict, summary.message)
    write_report(output_dir, summary, samples)
    return summary


def write_report(output_dir: Path, summary: EvaluationSummary, samples: dict[str, Any]) -> None:
    """evaluation.json, and the evaluation section of lineage.json and the model card."""
    doc = summary_document(summary)
    write_atomic(output_dir / EVALUATION_FILE, json.dumps({**doc, "responses": samples}, indent=2))
    lineage_file = output_dir / "lineage.json"
    if lineage_file.exists():
        lineage = json.loads(lineage_file.read_text())
        lineage["evaluationGates"] = doc
        write_atomic(lineage_file, json.dumps(lineage, indent=2))
        write_atomic(output_dir / "README.md", render_model_card(lineage, samples))
