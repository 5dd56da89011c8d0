"""``--validate-only``: the operator's CPU-only check before any GPU is requested.

Checks, in order, that the resolved config makes sense, the base (and DPO reference)
model is reachable and well-formed (config, tokenizer, every safetensors header — no
weights are loaded), the data inputs' digests are on the approved allow-list when the
job requires it, the datasets and evaluation sets are reachable and every row parses
(and tokenizes), the evaluation's baseline and reward models are well-formed, and the
output location is usable. The first failure raises the TrainerError whose
exit code tells the operator what is wrong; success returns a one-paragraph summary
and the resource plan (peak GPU memory and time per epoch, ``kubetune.plan``), which
the operator copies to ``status.plan``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from kubetune.api.methods import METHOD_TRAITS
from kubetune.api.resolve import ResolvedJob
from kubetune.contract.plan import PlanSummary, headline
from kubetune.plan import ModelShape as PlanShape
from kubetune.plan import ShapeError
from kubetune.plan.report import make_plan
from kubetune_trainer.continual.data import add_replay, describe_protection
from kubetune_trainer.data.batching import BatchPlan
from kubetune_trainer.data.provenance import check_approved
from kubetune_trainer.data.validate import PreparedData, prepare_data
from kubetune_trainer.dp.budget import plan_privacy
from kubetune_trainer.errors import InvalidConfigError
from kubetune_trainer.evaluation.data import load_set
from kubetune_trainer.methods.online import OnlineMethod
from kubetune_trainer.methods.policy import wants_lora_policy
from kubetune_trainer.methods.registry import get_method
from kubetune_trainer.models.load import (
    ModelInfo,
    inspect_model_dir,
    load_tokenizer,
    resolve_model_dir,
)
from kubetune_trainer.moe.training import check_moe_config
from kubetune_trainer.rl.memory import ModelShape, describe, estimate_roles
from kubetune_trainer.rl.scoring import build_check

log = logging.getLogger(__name__)


def validate_job(job: ResolvedJob, output_dir: Path) -> str:
    """The one-paragraph summary of a successful validation (see :func:`check_job`)."""
    return check_job(job, output_dir)[0]


def check_job(job: ResolvedJob, output_dir: Path) -> tuple[str, PlanSummary | None]:
    """Validate ``job``; the summary and the resource plan (None if it cannot be made)."""
    get_method(job)  # refuses unknown methods
    spec, hp, derived = job.spec, job.spec.hyperparameters, job.derived
    prompt = spec.peft.prompt if spec.peft else None
    if spec.method == "prompt" and prompt and prompt.init == "text" and not prompt.init_text:
        raise InvalidConfigError("peft.prompt.init text needs peft.prompt.initText")
    model_dir = resolve_model_dir(spec.model.uri, spec.model.revision)
    info = inspect_model_dir(model_dir, spec.model.trust_remote_code)
    moe = check_moe_config(spec.moe, _read_config(model_dir), spec.model.uri)  # spec.moe
    dpo = spec.rlhf.dpo if spec.rlhf else None
    if dpo and dpo.reference_model:
        inspect_model_dir(resolve_model_dir(dpo.reference_model, what="reference model"))
    tokenizer = load_tokenizer(model_dir, spec.model.trust_remote_code)
    provenance = check_approved(job)  # spec.dataset.provenance: digests before rows
    data = prepare_data(job, tokenizer)
    protected = ""
    if spec.continual is not None:  # protected tasks' rows are checked, replay is planned
        before = len(data.train.examples)
        tasks = add_replay(job, tokenizer, data)
        protected = describe_protection(tasks, len(data.train.examples) - before)
    evaluation = _check_evaluation(job)
    online = _check_online(job, info, data)
    _check_output(output_dir)
    plan = BatchPlan(
        num_units=len(data.train.examples),
        global_batch_size=derived.global_batch_size,
        micro_batch_size=hp.micro_batch_size,
        world_size=derived.world_size,
        gradient_accumulation_steps=derived.gradient_accumulation_steps,
        seed=hp.seed,
    )
    steps = plan.total_steps(hp.epochs, hp.max_steps)
    privacy = ""
    if spec.differential_privacy is not None:  # refuses plans that would exceed the budget
        privacy = plan_privacy(
            spec.differential_privacy,
            len(data.train.examples),
            derived.global_batch_size,
            steps,
            strict=True,
        ).describe()
    train = data.train.report
    eval_part = (
        f"eval {data.eval.report.valid_rows} rows" if data.eval is not None else "no eval set"
    )
    notes = []
    if spec.dataset.packing and not METHOD_TRAITS[spec.method].packs:
        notes.append(f"packing does not apply to method {spec.method}: batches are padded")
    if spec.method == "qlora":
        notes.append("qlora needs a CUDA GPU with bitsandbytes at training time")
    for report in data.reports:  # spec.dataPolicy: counts and kinds, never values
        if report.personal_data is not None and spec.data_policy and spec.data_policy.personal_data:
            counts = report.personal_data.counts
            found = ", ".join(f"{k} {n}" for k, n in sorted(counts.items())) or "none"
            notes.append(
                f"personal data in {report.split} ({spec.data_policy.personal_data.action}): "
                f"{found} in {report.personal_data.rows_with_findings} rows"
            )
    resources = _plan(job, model_dir, info.num_parameters, data)
    message = (
        f"validation passed: model {spec.model.uri} ({info.model_type}, "
        f"{info.num_parameters:,} parameters); train {train.valid_rows} of {train.rows} rows "
        f"({train.skipped_rows} invalid skipped, {train.truncated_rows} truncated to "
        f"{spec.dataset.max_seq_length} tokens), {eval_part}; {steps} optimizer steps planned "
        f"({plan.steps_per_epoch} per epoch) on {derived.world_size} processes"
        + (f"; {evaluation}" if evaluation else "")
        + (f"; {online}" if online else "")
        + (f"; {protected}" if protected else "")
        + (f"; {provenance}" if provenance else "")
        + (f"; {moe}" if moe else "")
        + (f"; {privacy}" if privacy else "")
        + ("; " + "; ".join(notes) if notes else "")
    )
    if resources is not None:
        message += f"; {headline(resources)}"
    return message, resources


def _plan(
    job: ResolvedJob, model_dir: Path, parameters: int, data: PreparedData
) -> PlanSummary | None:
    """Peak memory per GPU and time per epoch from the model's config.json and the
    tokenized data; an estimate never fails validation (None, logged, when it cannot)."""
    try:
        shape = PlanShape.from_file(model_dir)
    except ShapeError as exc:
        log.warning("no resource plan: %s", exc)
        return None
    shape = shape.with_counted_parameters(parameters)  # exact, from the headers
    tokens = labelled = 0
    for example in data.train.examples:
        tokens += len(example.input_ids)
        labelled += sum(getattr(s, "num_label_tokens", 0) for s in _samples(example))
    fraction = min(1.0, labelled / tokens) if tokens and labelled else 1.0
    return make_plan(
        job, shape, tokens_per_epoch=tokens or None, loss_token_fraction=fraction
    ).summary()


def _samples(example: object) -> list[object]:
    pair = [getattr(example, "chosen", None), getattr(example, "rejected", None)]
    return [s for s in pair if s is not None] or [example]


def _check_evaluation(job: ResolvedJob) -> str:
    """The evaluation inputs, before training rather than after it: every set parses, and
    the baseline and reward models are reachable and well-formed (headers only)."""
    spec = job.spec.evaluation
    if spec is None:
        return ""
    if spec.baseline:
        inspect_model_dir(resolve_model_dir(spec.baseline, what="evaluation baseline"))
    rows = 0
    for eval_set in spec.sets:
        rows += len(load_set(eval_set))
        for metric in eval_set.metrics:
            if metric.uri:
                inspect_model_dir(
                    resolve_model_dir(metric.uri, what=f"reward model of {eval_set.name}")
                )
    sets, gates = len(spec.sets), len(spec.gates)
    return (
        f"evaluation: {sets} set{'s' * (sets != 1)}, {rows} prompt{'s' * (rows != 1)}, "
        f"{gates} gate{'s' * (gates != 1)}"
    )


def _check_online(job: ResolvedJob, policy: ModelInfo, data: PreparedData) -> str:
    """PPO, GRPO, RLOO: the reward, value and held-out models are reachable, well-formed and
    speak the policy's vocabulary; the batch splits into PPO's mini-batches; and the memory
    of each colocated role, estimated from the configs."""
    spec = job.spec
    if not METHOD_TRAITS[spec.method].online:
        return ""
    rlhf = spec.rlhf
    assert rlhf is not None and rlhf.reward is not None and rlhf.generation is not None
    method = get_method(job)
    if isinstance(method, OnlineMethod):
        method.check_plan(job.derived.gradient_accumulation_steps)
    if rlhf.reward.verifiable is not None:
        try:  # an invalid regex fails here, not at the first step
            build_check(rlhf.reward.verifiable)
        except ValueError as exc:
            raise InvalidConfigError(f"rlhf.reward.verifiable: {exc}") from exc
    vocab = _vocab_size(policy.path)
    shapes: dict[str, ModelShape] = {}
    named = {
        "reward model": rlhf.reward.model,
        "value model": rlhf.ppo.value_model if rlhf.ppo and spec.method == "ppo" else None,
        "held-out reward model": rlhf.guards.held_out_reward_model if rlhf.guards else None,
    }
    for what, uri in named.items():
        if not uri:
            continue
        info = inspect_model_dir(resolve_model_dir(uri, what=what))
        if _vocab_size(info.path) != vocab:
            raise InvalidConfigError(
                f"the {what} {uri} has a vocabulary of {_vocab_size(info.path)} tokens, the "
                f"policy {vocab}: it must share the policy's tokenizer to score its responses"
            )
        scorer = what != "value model"  # a value model may start from any decoder
        if scorer and not any(a.endswith("ForSequenceClassification") for a in info.architectures):
            raise InvalidConfigError(
                f"the {what} {uri} is a {', '.join(info.architectures) or info.model_type}, "
                "not a sequence classifier: train one with method reward (a causal LM would "
                "get a random score head)"
            )
        shapes[what] = _shape(info)
    value: ModelShape | None = None
    if spec.method == "ppo":
        value = shapes.get("value model") or shapes.get("reward model") or _shape(policy)
    gen = rlhf.generation
    samples = gen.samples_per_prompt or 1
    longest = max((len(e.input_ids) for e in data.train.examples), default=0)
    dtype_bytes = 4 if spec.hyperparameters.precision == "fp32" else 2
    lora = spec.peft.lora.r if wants_lora_policy(job) and spec.peft and spec.peft.lora else None
    roles = estimate_roles(
        _shape(policy),
        dtype_bytes=dtype_bytes,
        lora_rank=lora,
        reward=shapes.get("reward model"),
        value=value,
        sequences_per_chunk=spec.hyperparameters.micro_batch_size * samples,
        tokens_per_sequence=longest + gen.max_new_tokens,
    )
    return describe(roles)


def _read_config(model_dir: Path) -> dict[str, object]:
    """The model's config.json (inspect_model_dir has checked that it parses)."""
    import json

    value = json.loads((model_dir / "config.json").read_text())
    return value if isinstance(value, dict) else {}


def _vocab_size(path: Path) -> int:
    from transformers import AutoConfig

    return int(getattr(AutoConfig.from_pretrained(path), "vocab_size", 0) or 0)


def _shape(info: ModelInfo) -> ModelShape:
    from transformers import AutoConfig

    return ModelShape.from_config(AutoConfig.from_pretrained(info.path), info.num_parameters)


def _check_output(output_dir: Path) -> None:
    """An existing output directory must be writable (e.g. not a read-only PVC mount).

    A missing one is fine: the validation pod may not mount the output volume, and the
    trainer creates the directory.
    """
    if output_dir.exists() and not os.access(output_dir, os.W_OK):
        raise InvalidConfigError(f"the output location {output_dir} is not writable")
