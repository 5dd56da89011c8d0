"""Compare tuned vs. baseline and decide the gates; pure Python, no torch.

The rule (docs/evaluation.md): for a generation metric (higher is better) the one-sided
lower bound of ``tuned - baseline`` at the evaluation's confidence comes from a paired
bootstrap (percentile method), and ``noWorseThanBaseline`` passes when that bound is at
least ``-tolerance``. Held-out loss/perplexity (lower is better) are corpus-level ratios
(summed NLL over target tokens); with per-example sums of both models (LM objectives) a
paired bootstrap of the ratio difference gives the one-sided upper bound, and the gate
passes when it is at most ``tolerance``. Without them (preference/reward objectives, sets
over the per-example cap, a resume from an older checkpoint) the gate uses the point
estimate ``tuned - baseline <= tolerance`` and says so. ``atLeast``/``atMost`` compare the
tuned model's mean. A metric that was not measured fails every gate that names it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kubetune.api.evaluation import HELD_OUT, EvaluationGate, EvaluationSpec
from kubetune.contract.evaluation import EvaluationSummary, GateSummary, MetricSummary
from kubetune.stats.bootstrap import PairedInterval, paired_bootstrap, paired_ratio_bootstrap


@dataclass(frozen=True)
class PairedScores:
    """Per-example scores of one generation metric, in the same example order."""

    baseline: Sequence[float]
    tuned: Sequence[float]


#: The trainer reports perplexity as exp(mean NLL) capped at exp(50) (no overflow).
PERPLEXITY_CAP = 50.0


def perplexity(mean_nll: float) -> float:
    return math.exp(min(mean_nll, PERPLEXITY_CAP))


@dataclass(frozen=True)
class PairedSums:
    """Per held-out example: the baseline's and the tuned model's summed NLL over its target
    tokens, and that token count, in the same example order."""

    baseline: Sequence[float]
    tuned: Sequence[float]
    tokens: Sequence[float]


@dataclass(frozen=True)
class CorpusFigure:
    """A held-out figure (lower is better), with the per-example sums behind it when the
    trainer had them (else point estimates only)."""

    baseline: float | None
    tuned: float | None
    samples: int | None = None
    per_example: PairedSums | None = None


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def compare(
    spec: EvaluationSpec,
    scores: Mapping[str, PairedScores],
    held_out: Mapping[str, CorpusFigure],
) -> list[MetricSummary]:
    """One MetricSummary per metric: means, delta and the one-sided bounds."""
    two_sided = 2.0 * spec.confidence - 1.0
    out: list[MetricSummary] = []
    for name, figure in held_out.items():
        if figure.per_example is not None and figure.per_example.tokens:
            sums = figure.per_example
            ci = paired_ratio_bootstrap(
                sums.baseline,
                sums.tuned,
                sums.tokens,
                transform=perplexity if name.endswith("/perplexity") else None,
                confidence=two_sided,
                resamples=spec.bootstrap_samples,
                seed=spec.seed,
            )
            out.append(_from_interval(name, ci))
            continue
        b, t = figure.baseline, figure.tuned
        delta = t - b if t is not None and b is not None and _finite(t) and _finite(b) else None
        out.append(
            MetricSummary(
                name=name,
                baseline=figure.baseline,
                tuned=figure.tuned,
                delta=delta,
                samples=figure.samples,
            )
        )
    for name, pair in scores.items():
        if not pair.tuned:
            out.append(MetricSummary(name=name, samples=0))
            continue
        ci = paired_bootstrap(
            pair.baseline,
            pair.tuned,
            confidence=two_sided,
            resamples=spec.bootstrap_samples,
            seed=spec.seed,
        )
        out.append(_from_interval(name, ci))
    return out


def _from_interval(name: str, ci: PairedInterval) -> MetricSummary:
    """The summary of a metric measured with a bootstrap interval."""
    return MetricSummary(
        name=name,
        baseline=ci.baseline,
        tuned=ci.tuned,
        delta=ci.delta,
        ci_low=ci.low,
        ci_high=ci.high,
        samples=ci.samples,
    )


def _pct(confidence: float) -> str:
    return f"{100 * confidence:g}%"


def judge(gate: EvaluationGate, metric: MetricSummary | None, confidence: float) -> GateSummary:
    """Every rule of one gate must hold; the message gives the numbers behind the verdict."""
    rules: list[str] = []
    failures: list[str] = []
    facts: list[str] = []
    lower_is_better = gate.metric.startswith(f"{HELD_OUT}/")
    tuned = metric.tuned if metric else None
    if gate.no_worse_than_baseline is not None:
        tol = gate.no_worse_than_baseline.tolerance
        high = metric.ci_high if metric else None
        if lower_is_better and _finite(high):
            assert high is not None and metric is not None
            rules.append(f"upper {_pct(confidence)} bound of tuned - baseline <= {tol:g}")
            facts.append(f"delta {metric.delta:.4g}, upper bound {high:.4g}")
            if high > tol:
                failures.append(
                    f"upper {_pct(confidence)} bound of tuned - baseline = {high:.4g} > {tol:g}"
                )
        elif lower_is_better:
            rules.append(f"tuned - baseline <= {tol:g}")
            delta = metric.delta if metric else None
            if not _finite(delta):
                failures.append("baseline comparison not measured")
            else:
                assert delta is not None
                facts.append(f"delta {delta:.4g} (point estimate: no per-example values)")
                if delta > tol:
                    failures.append(
                        f"tuned - baseline = {delta:.4g} > {tol:g}"
                        " (point estimate: no per-example values)"
                    )
        else:
            rules.append(f"lower {_pct(confidence)} bound of tuned - baseline >= {-tol:g}")
            low = metric.ci_low if metric else None
            if not _finite(low):
                failures.append("baseline comparison not measured")
            else:
                assert low is not None and metric is not None
                facts.append(f"delta {metric.delta:.4g}, lower bound {low:.4g}")
                if low < -tol:
                    failures.append(
                        f"lower {_pct(confidence)} bound of tuned - baseline = {low:.4g} < {-tol:g}"
                    )
    for label, bound, ok in (
        ("atLeast", gate.at_least, lambda t, b: t >= b),
        ("atMost", gate.at_most, lambda t, b: t <= b),
    ):
        if bound is None:
            continue
        rules.append(f"tuned {'>=' if label == 'atLeast' else '<='} {bound:g}")
        if not _finite(tuned):
            failures.append("tuned value not measured")
        else:
            assert tuned is not None
            if not ok(tuned, bound):
                failures.append(f"tuned = {tuned:.4g}, {label} {bound:g}")
    if _finite(tuned) and not failures:
        assert tuned is not None
        facts.insert(0, f"tuned {tuned:.4g}")
    return GateSummary(
        metric=gate.metric,
        rule=" and ".join(rules),
        passed=not failures,
        message="; ".join(dict.fromkeys(failures)) if failures else ", ".join(facts),
    )


def summarize(
    spec: EvaluationSpec,
    baseline_uri: str,
    scores: Mapping[str, PairedScores],
    held_out: Mapping[str, CorpusFigure],
) -> EvaluationSummary:
    """Metrics, gate verdicts and the overall verdict of one evaluation."""
    metrics = compare(spec, scores, held_out)
    by_name = {m.name: m for m in metrics}
    gates = [judge(g, by_name.get(g.metric), spec.confidence) for g in spec.gates]
    failed = [g for g in gates if not g.passed]
    if failed:
        message = f"{len(failed)} of {len(gates)} gates failed: " + "; ".join(
            f"{g.metric}: {g.message}" for g in failed
        )
    else:
        message = f"all {len(gates)} gates passed" if gates else "no gates"
    return EvaluationSummary(
        verdict="Failed" if failed else "Passed",
        baseline=baseline_uri,
        confidence=spec.confidence,
        metrics=metrics,
        gates=gates,
        message=message,
    )
