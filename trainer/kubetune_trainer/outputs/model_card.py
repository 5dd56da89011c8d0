"""The model card (README.md) written next to the weights, from the lineage record.

Hugging Face front matter (base model, library, tags) so hubs and registries index it,
then what a reviewer needs: method and hyperparameters, the training curves (a picture and
the final/best figures), data counts (including skipped
and truncated rows), data provenance (every input's digest, filters, redactions,
approval), evaluation of tuned vs. base model, digests, versions, and how to
load the result.
"""

from __future__ import annotations

import json
from typing import Any

from kubetune.api.methods import METHOD_TRAITS, SavedAs, saved_as
from kubetune.contract.display import BEFORE_AFTER_ROWS, answer_text, duration, number, prompt_text
from kubetune_trainer.continual.card import continual_section
from kubetune_trainer.dp.card import privacy_section
from kubetune_trainer.moe.report import card_section as moe_card_section
from kubetune_trainer.privacy.report import personal_data_card_section


def _fmt(value: Any) -> str:
    return number(value)


def _eval_table(evaluation: dict[str, Any]) -> str:
    base = evaluation.get("base") or {}
    tuned = evaluation.get("tuned") or {}
    if not tuned:
        return "No evaluation set was configured (dataset.eval or dataset.evalSplit).\n"
    keys = [k for k in tuned if isinstance(tuned[k], int | float)]
    lines = ["| metric | base model | tuned model |", "| --- | --- | --- |"]
    for key in keys:
        lines.append(f"| {key} | {_fmt(base.get(key, 'n/a'))} | {_fmt(tuned[key])} |")
    return "\n".join(lines) + "\n"


def _gates_section(doc: dict[str, Any] | None) -> str:
    """spec.evaluation's result (evaluation.json): metrics vs. baseline, gates, verdict."""
    if not doc:
        return ""
    lines = [
        "## Evaluation gates",
        "",
        f"Verdict: **{doc.get('verdict')}** — {doc.get('message', '')}. Baseline: "
        f"`{doc.get('baseline')}`; bounds are one-sided at {_fmt(doc.get('confidence'))} "
        "confidence (paired bootstrap, percentile method). Details in `evaluation.json`.",
        "",
        "| metric | baseline | tuned | delta | lower bound | upper bound | n |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = ("baseline", "tuned", "delta", "ciLow", "ciHigh", "samples")
    for m in doc.get("metrics") or []:
        cells = " | ".join(_fmt(m.get(k)) if m.get(k) is not None else "n/a" for k in keys)
        lines.append(f"| {m['name']} | {cells} |")
    if doc.get("gates"):
        lines += ["", "| gate | rule | passed | detail |", "| --- | --- | --- | --- |"]
        for g in doc["gates"]:
            lines.append(
                f"| {g['metric']} | {g['rule']} | {'yes' if g['passed'] else 'NO'} "
                f"| {g.get('message', '')} |"
            )
    return "\n".join(lines) + "\n\n"


def _at(point: dict[str, Any] | None) -> str:
    return f"{_fmt(point['value'])} (step {point['step']})" if point else "n/a"


def _curves_section(curves: dict[str, Any] | None) -> str:
    """The picture of the run (``training_curves.png``) and its final/best figures."""
    if not curves:
        return "No training curves were recorded.\n"
    s = curves.get("summary") or {}
    lines = []
    if curves.get("image"):
        lines += [f"![Training curves]({curves['image']})", ""]
    else:
        lines += ["(The picture could not be drawn; the series are in the JSON file.)", ""]
    tps = s.get("medianTokensPerSecond")
    peak = s.get("peakTokensPerSecond")
    base_eval, final_eval = s.get("baseEvalLoss"), s.get("finalEvalLoss")
    lines += [
        "| figure | value |",
        "| --- | --- |",
        f"| final training loss | {_at(s.get('finalLoss'))} |",
        f"| best training loss | {_at(s.get('bestLoss'))} |",
        "| eval loss, base → tuned | "
        + (f"{_fmt(base_eval)} → {_fmt(final_eval)}" if final_eval is not None else "n/a")
        + " |",
        f"| best eval loss | {_at(s.get('bestEvalLoss'))} |",
        "| final learning rate | "
        + (f"{lr:.3g}" if isinstance(lr := s.get("finalLearningRate"), float) else "n/a")
        + " |",
        "| throughput, median (peak) | "
        + (f"{tps:,.0f} ({peak:,.0f}) tokens/s" if tps is not None and peak else "n/a")
        + " |",
    ]
    restarts = s.get("restarts") or []
    if restarts:
        lines.append(
            "| resumed from checkpoints at steps | " + ", ".join(map(str, restarts)) + " |"
        )
    lines += [
        "",
        f"Every recorded point is in `{curves.get('data')}` (at most "
        "2000 per series, evenly spread, the last step always included).",
    ]
    return "\n".join(lines) + "\n"


def _saved_as(job: dict[str, Any]) -> SavedAs:
    """What the output holds: a method with a LoRA policy (``peft.lora``) saves an adapter."""
    spec = (job.get("resolvedJob") or {}).get("spec") or {}
    lora = bool((spec.get("peft") or {}).get("lora"))
    return saved_as(job["method"], lora)


def _how_to_load(saved: SavedAs, base_uri: str) -> str:
    if saved == "peft-adapter":
        return (
            "```python\nfrom peft import AutoPeftModelForCausalLM\n"
            'model = AutoPeftModelForCausalLM.from_pretrained("<this directory>")\n```\n'
            f"(the adapter config names the base model; the base came from `{base_uri}`.)\n"
        )
    if saved == "bottleneck-adapter":
        return (
            "Bottleneck adapters (kubetune's own; not mergeable):\n\n"
            "```python\nfrom kubetune_trainer.methods.adapters import load_bottleneck_adapter\n"
            'model = load_bottleneck_adapter(base_dir, "<this directory>")\n```\n'
        )
    if saved == "reward-model":
        return (
            "```python\nfrom transformers import AutoModelForSequenceClassification\n"
            'model = AutoModelForSequenceClassification.from_pretrained("<this directory>")\n```\n'
        )
    return (
        "```python\nfrom transformers import AutoModelForCausalLM\n"
        'model = AutoModelForCausalLM.from_pretrained("<this directory>")\n```\n'
    )


def _approval(record: dict[str, Any]) -> str:
    approval = record.get("approval")
    if not approval:
        return "not checked"
    if approval.get("approved") is None:
        return "required, checked by the validation pod" if approval.get("required") else "n/a"
    if approval["approved"]:
        return "yes" + (f" ({approval['approvedAs']})" if approval.get("approvedAs") else "")
    return "NO"


def _provenance_section(prov: dict[str, Any] | None) -> str:
    """lineage.json's ``provenance``: every data input's full digest, counts, filters,
    redactions, approval, and the data policy."""
    if not prov:
        return ""
    allow = prov.get("allowList")
    if allow:
        rule = (
            "required: every data input's sha256 must be on"
            if prov.get("requireApproved")
            else "recorded against (not required)"
        )
        lines = [
            f"Approved provenance {rule} ConfigMap `{allow['configMap']}` (key `{allow['key']}`)."
        ]
    else:
        lines = ["No approved-provenance allow-list was required (dataset.provenance)."]
    policy = prov.get("dataPolicy")
    lines.append(
        "Data policy: " + (f"`{json.dumps(policy, sort_keys=True)}`" if policy else "none") + "."
    )
    lines += [
        "",
        "| input | location | sha256 | rows (valid / invalid / skipped / truncated) "
        "| redactions | approved |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    filters: list[str] = []
    for r in prov.get("inputs") or []:
        c = r.get("rows")
        rows = (
            f"{c['total']} ({c['valid']} / {c['invalid']} / {c['skippedInvalid']} / "
            f"{c['truncated']})"
            if c
            else "not counted"
        )
        red = r.get("redactions") or {}
        redactions = ", ".join(f"{k}: {v}" for k, v in sorted(red.items())) or "none"
        kind = f" ({r['digestOf']})" if r.get("digestOf") == "directory" else ""
        lines.append(
            f"| {r['role']} | `{r['uri']}` | `{r.get('sha256') or 'n/a'}`{kind} | {rows} "
            f"| {redactions} | {_approval(r)} |"
        )
        if r.get("filters"):
            filters.append(f"- {r['role']}: " + "; ".join(r["filters"]))
    if filters:
        lines += ["", "Filters applied:", "", *filters]
    return "## Data provenance\n\n" + "\n".join(lines) + "\n\n"


_ROLE_NAMES = {
    "model": "started from",
    "rewardModel": "reward model",
    "valueModel": "value model",
    "referenceModel": "reference model",
}


def _upstream_lines(upstream: dict[str, Any], indent: int) -> list[str]:
    lines = []
    for role, record in upstream.items():
        if not isinstance(record, dict):
            continue
        job = record.get("job") or {}
        data = ", ".join(f"`{d.get('uri')}`" for d in record.get("datasets") or []) or "n/a"
        base = (record.get("baseModel") or {}).get("uri")
        lines.append(
            f"{'  ' * indent}- {_ROLE_NAMES.get(role, role)}: `{record.get('outputDirectory')}`"
            f", job {job.get('namespace')}/{job.get('name')} (method {job.get('method')}, "
            f"config `{str(job.get('configHash'))[:12]}`), from `{base}` on {data}"
        )
        if isinstance(record.get("upstream"), dict):
            lines += _upstream_lines(record["upstream"], indent + 1)
    return lines


def _upstream_section(upstream: Any) -> str:
    """The kubetune stages before this one (a pipeline's SFT and reward model), nested."""
    if not isinstance(upstream, dict) or not upstream:
        return ""
    lines = _upstream_lines(upstream, 0)
    return "\nEarlier kubetune stages this model depends on:\n\n" + "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _before_after_section(responses: dict[str, Any] | None) -> str:
    """A few prompts of each evaluation set, answered by the baseline and the tuned model."""
    if not responses:
        return ""
    lines = [
        "## Before and after",
        "",
        "Held-out prompts of `spec.evaluation`, greedy decoding (full list in `evaluation.json`).",
    ]
    for name, rows in responses.items():
        lines += ["", f"Set `{name}`:", "", "| prompt | base model | tuned model | expected |"]
        lines.append("| --- | --- | --- | --- |")
        for row in rows[:BEFORE_AFTER_ROWS]:
            cells = (
                prompt_text(row["prompt"]),
                answer_text(row["baseline"]),
                answer_text(row["tuned"]),
                answer_text(row["reference"]),
            )
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n\n"


def render_model_card(lineage: dict[str, Any], responses: dict[str, Any] | None = None) -> str:
    """The card; ``responses`` (evaluation.json's, per set) adds the before/after section."""
    job = lineage["job"]
    base = lineage["baseModel"]
    training = lineage["training"]
    evaluation = lineage["evaluation"]
    software = lineage["software"]
    method = job["method"]
    saved = _saved_as(job)
    library = "peft" if saved == "peft-adapter" else "transformers"
    front = [
        "---",
        f"base_model: {json.dumps(base['uri'])}",
        f"library_name: {library}",
        "tags:",
        "- kubetune",
        f"- {method}",
        "---",
        "",
    ]
    data_rows = []
    for d in lineage["datasets"]:
        data_rows.append(
            f"| {d['split']} | `{d['uri']}` | {d.get('rows', 'n/a')} | {d.get('validRows', 'n/a')} "
            f"| {d.get('skippedRows', 0)} | {d.get('truncatedRows', 0)} "
            f"| `{(d.get('sha256') or 'n/a')[:16]}…` |"
        )
    hp = training.get("hyperparameters", {})
    hp_rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in hp.items())
    versions = ", ".join(f"{k} {v}" for k, v in software["versions"].items())
    t = training
    revision = f" (revision {base['revision']})" if base.get("revision") else ""
    resumed = t.get("resumedFromStep")
    lora_policy = METHOD_TRAITS[method].lora_option and saved == "peft-adapter"
    policy = " (policy: a LoRA adapter on the frozen base)" if lora_policy else ""
    summary = "\n".join(
        [
            f"- steps: {t.get('steps')} ({_fmt(t.get('epochs', 0.0))} epochs), "
            f"world size {t.get('worldSize')}, engine {t.get('engine')}, "
            f"precision {t.get('precision')}",
            f"- batching: {t.get('batching')}",
            f"- tokens trained on: {_fmt(t.get('tokensSeen'))} (non-padding), "
            f"samples: {_fmt(t.get('samplesSeen'))}",
            f"- final training loss: {_fmt(t.get('finalLoss'))}",
            f"- wall time of the last attempt: {duration(t.get('elapsedSeconds'))}"
            + (f"; resumed from the checkpoint of step {resumed}" if resumed is not None else ""),
        ]
    )
    continual = continual_section(evaluation.get("continual"))  # spec.continual
    data_sections = personal_data_card_section(lineage.get("dataPolicy")) + _provenance_section(
        lineage.get("provenance")
    )
    gates = _gates_section(lineage.get("evaluationGates")) + _before_after_section(responses)
    body = f"""# {job["name"]}

Fine-tuned by kubetune with method **{method}**{policy} from `{base["uri"]}`{revision}.

## Training

{summary}

| hyperparameter | value |
| --- | --- |
{hp_rows}

## Training curves

{_curves_section(lineage.get("curves"))}
{moe_card_section(lineage.get("moe"))}{privacy_section(lineage.get("differentialPrivacy"))}## Data

| split | location | rows | used | skipped (invalid) | truncated | sha256 |
| --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(data_rows)}

Invalid rows are listed with file, line and reason in `data_issues.jsonl` when present.

{data_sections}## Evaluation

{_eval_table(evaluation)}
{continual}{gates}## Lineage
{_upstream_section(lineage.get("upstream"))}
- base model sha256: `{base.get("sha256")}`
- resolved job config sha256: `{job.get("configHash")}`
- git revision: `{software.get("gitRevision") or "unknown"}`
- software: {versions}

The complete record is in `lineage.json`.

## How to load

{_how_to_load(saved, base["uri"])}"""
    return "\n".join(front) + body
