"""Continual learning: train a new task without forgetting earlier ones (``spec.continual``).

A job names the earlier tasks whose skills it must keep (``protectedTasks``: their data,
in the formats of ``spec.dataset``) and how to protect them: ``replay`` mixes a share of
their rows into every epoch, and a ``regularizer`` keeps the trainable weights near
where training started (``ewc``: weighted by the diagonal Fisher information of the
protected tasks; ``l2sp``: unweighted). Either, both or neither may be set; with neither
the job only measures forgetting (eval loss on each protected task before and after
training), which the model card reports in every case.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from kubetune.api.base import ApiModel, cel, validations
from kubetune.api.common import LOCATION_HELP, DNSLabel, Location
from kubetune.api.methods import SFT_FORMATS, cel_list, methods_where
from kubetune.api.sources import FieldMapping

#: methods trained on language-modelling data: the only ones whose batches protected
#: rows can join and whose loss measures a protected task's eval loss
CONTINUAL_METHODS: tuple[str, ...] = methods_where(lambda t: set(SFT_FORMATS) <= set(t.formats))
#: strategies whose trainable parameters are whole tensors on every rank (the penalty
#: reads them directly; FSDP and DeepSpeed shard them)
REGULARIZER_STRATEGIES: tuple[str, ...] = ("ddp",)
MAX_PROTECTED_TASKS = 8
DEFAULT_PROTECTED_EVAL_SPLIT = 0.1
DEFAULT_FISHER_SAMPLES = 64


class ProtectedTask(ApiModel):
    """An earlier task whose skill must survive this training: its data and format."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "!(has(self.eval) && has(self.evalSplit))",
                "set either eval (a separate evaluation set) or evalSplit (a fraction of "
                "train held out), not both",
                field_path=".evalSplit",
            ),
        )
    }

    name: DNSLabel = Field(
        description="Name of the task (a DNS label), unique in protectedTasks; the model "
        "card and eval_results.json report forgetting under it."
    )
    train: Location = Field(
        description="Location of the task's training rows (replayed, and the Fisher "
        "information of ewc is estimated on them). " + LOCATION_HELP
    )
    eval: Location | None = Field(
        default=None,
        description="Location of the task's evaluation rows, on which forgetting is "
        "measured. Without it, evalSplit of train is held out (and never replayed).",
    )
    format: Literal["chat", "promptCompletion", "text"] = Field(
        description="Row format of the task's data (as dataset.format): chat, "
        "promptCompletion or text."
    )
    field_mapping: FieldMapping | None = Field(
        default=None, description="Column names, when they differ from the format's defaults."
    )
    eval_split: float | None = Field(
        default=None,
        gt=0.0,
        le=0.5,
        description="Fraction of train held out to measure forgetting when eval is not set. "
        f"Default {DEFAULT_PROTECTED_EVAL_SPLIT}.",
    )


class ReplaySpec(ApiModel):
    """Rehearsal: protected tasks' training rows mixed into the new task's epochs."""

    ratio: float = Field(
        ge=0.0,
        le=0.9,
        description="Share of each epoch's training rows that are replayed protected rows: "
        "with N new-task rows, round(N * ratio / (1 - ratio)) protected rows join the "
        "training set (split evenly over the protected tasks, drawn without repetition "
        "while a task has rows left, deterministically from hyperparameters.seed) and are "
        "shuffled with the new rows every epoch. 0 disables replay; at most 0.9.",
    )


class RegularizerSpec(ApiModel):
    """A penalty that keeps the trainable weights near their values at the start."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "!has(self.fisherSamples) || self.type == 'ewc'",
                "fisherSamples applies only to type ewc (l2sp weighs every parameter equally)",
                field_path=".fisherSamples",
            ),
        )
    }

    type: Literal["ewc", "l2sp"] = Field(
        description="ewc (elastic weight consolidation): strength/2 * sum_i F_i * "
        "(theta_i - theta*_i)^2 with F the diagonal empirical Fisher information of the "
        "protected tasks, estimated at theta* before the first step; l2sp: strength/2 * "
        "||theta - theta*||^2. theta* are the trainable parameters when training starts "
        "(for LoRA and other adapters: their initial values); frozen weights are not "
        "regularised."
    )
    strength: float = Field(
        gt=0.0,
        le=1.0e9,
        description="lambda, the weight of the penalty against the per-token training loss.",
    )
    fisher_samples: int | None = Field(
        default=None,
        ge=1,
        le=100000,
        description="ewc: protected training rows whose squared gradients are averaged into "
        "the Fisher estimate (spread evenly over the tasks, over all ranks). "
        f"Default {DEFAULT_FISHER_SAMPLES}.",
    )


class ContinualSpec(ApiModel):
    """Earlier tasks to protect while training the new one, and how."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.protectedTasks.all(a, self.protectedTasks.exists_one(b, b.name == a.name))",
                "protectedTasks names must be unique",
                field_path=".protectedTasks",
            ),
        )
    }

    protected_tasks: list[ProtectedTask] = Field(
        min_length=1,
        max_length=MAX_PROTECTED_TASKS,
        description="Earlier tasks whose eval loss must not rise: measured before and after "
        "training (forgetting = after - before) and protected by replay and/or the "
        "regularizer.",
    )
    replay: ReplaySpec | None = Field(
        default=None, description="Mix protected rows into training (rehearsal)."
    )
    regularizer: RegularizerSpec | None = Field(
        default=None,
        description="Penalise moving the trainable weights from their starting values "
        f"(strategy {' or '.join(REGULARIZER_STRATEGIES)} only).",
    )


def continual_rules() -> list[dict[str, Any]]:
    """CEL rules of FineTuneJobSpec that involve ``continual`` (methods, strategies)."""
    return [
        cel(
            f"!has(self.continual) || self.method in {cel_list(CONTINUAL_METHODS)}",
            "continual applies only to methods trained on language-modelling data ("
            + ", ".join(CONTINUAL_METHODS)
            + "): reward models, preference and online RL methods have no per-token loss "
            "to replay protected rows into or to measure forgetting with",
            field_path=".continual",
        ),
        cel(
            f"!has(self.continual) || self.dataset.format in {cel_list(SFT_FORMATS)}",
            "continual needs a text dataset.format ("
            + ", ".join(SFT_FORMATS)
            + "): protected tasks are text, and replaying them into image batches is not "
            "supported",
            field_path=".continual",
        ),
        cel(
            "!has(self.continual) || !has(self.continual.regularizer) || "
            f"self.distributed.strategy in {cel_list(REGULARIZER_STRATEGIES)}",
            "continual.regularizer needs distributed.strategy ddp: fsdp and deepspeed shard "
            "the parameters the penalty compares with their starting values",
            field_path=".continual.regularizer",
        ),
        cel(
            "has(self.continual) == has(oldSelf.continual) && "
            "(!has(self.continual) || self.continual == oldSelf.continual)",
            "continual cannot change after creation; create a new FineTuneJob instead",
            field_path=".continual",
        ),
    ]
