"""The FineTunePipeline resource: SFT -> reward model -> RL (or any chain) as one object.

A pipeline lists stages in order; each stage is a *partial* FineTuneJob spec (validated the
way a FineTuneProfile's partial specs are) laid over the pipeline's ``defaults``, and names
the earlier stages whose outputs it consumes (``inputs``). The operator creates one
FineTuneJob per stage, one at a time, each only after the one before it Succeeded; the CLI
runs the same stages locally. Both build a stage's job with :func:`stage_job_spec`, so a
stage means the same thing on a laptop and in a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import Field

from kubetune.api.base import ApiModel, cel, validations
from kubetune.api.common import DNSLabel, OutputLocation
from kubetune.api.job import API_VERSION, ObjectMeta
from kubetune.api.problems import Problem
from kubetune.api.profiles import deep_merge
from kubetune.api.status import Condition

KIND: Final = "FineTunePipeline"
PLURAL = "finetunepipelines"
SINGULAR = "finetunepipeline"
SHORT_NAMES = ["ftp"]
CATEGORIES = ["kubetune", "all"]
MAX_STAGES: Final = 16

#: Labels and annotations of the stage jobs (the operator sets them; kept here so the CLI,
#: docs and tests name them once).
LABEL_PIPELINE: Final = "kubetune.io/pipeline"
LABEL_STAGE: Final = "kubetune.io/stage"
#: JSON: the pipeline, the stage, and per input the upstream stage, job and output.
ANNOTATION_LINEAGE: Final = "kubetune.io/pipeline-lineage"
#: The spec.retryGeneration the job was created under (a failed job created under an
#: older value is re-created once; see :class:`FineTunePipelineSpec.retry_generation`).
ANNOTATION_RETRY: Final = "kubetune.io/pipeline-retry-generation"

#: Each input (camelCase, as in manifests) and the stage-job spec field it sets.
INPUT_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "model": ("model", "uri"),
    "rewardModel": ("rlhf", "reward", "model"),
    "valueModel": ("rlhf", "ppo", "valueModel"),
    "referenceModel": ("rlhf", "dpo", "referenceModel"),
}


def _input_rules() -> list[dict[str, Any]]:
    """CEL: inputs name another stage, and never also set the field they wire."""
    rules = []
    for name, path in INPUT_FIELDS.items():
        named = f"has(s.inputs) && has(s.inputs.{name})"
        rules.append(
            cel(
                f"self.stages.all(s, !({named}) || (s.inputs.{name} != s.name && "
                f"self.stages.exists(t, t.name == s.inputs.{name})))",
                f"inputs.{name} must name another (earlier) stage of this pipeline",
                field_path=".stages",
            )
        )
        prefix = "s.spec"
        present = " && ".join(f"has({prefix}.{'.'.join(path[: i + 1])})" for i in range(len(path)))
        rules.append(
            cel(
                f"self.stages.all(s, !({named}) || !({present}))",
                f"a stage with inputs.{name} must not set spec.{'.'.join(path)} too "
                "(the input sets it to the upstream stage's output)",
                field_path=".stages",
            )
        )
    return rules


SPEC_RULES: list[dict[str, Any]] = [
    cel(
        "self.stages.all(s, self.stages.exists_one(t, t.name == s.name))",
        "stage names must be unique",
        field_path=".stages",
    ),
    cel(
        "has(self.output) || self.stages.all(s, has(s.spec.output) && has(s.spec.output.uri))",
        "set output.uri (each stage then writes to <output.uri>/<stage name>) or "
        "spec.output.uri in every stage",
        field_path=".output",
    ),
    *_input_rules(),
]


class StageInputs(ApiModel):
    """Earlier stages whose outputs this stage consumes."""

    model: DNSLabel | None = Field(
        default=None, description="Stage whose output is this stage's spec.model.uri."
    )
    reward_model: DNSLabel | None = Field(
        default=None, description="Stage whose output is spec.rlhf.reward.model."
    )
    value_model: DNSLabel | None = Field(
        default=None, description="Stage whose output is spec.rlhf.ppo.valueModel."
    )
    reference_model: DNSLabel | None = Field(
        default=None, description="Stage whose output is spec.rlhf.dpo.referenceModel."
    )

    def named(self) -> dict[str, str]:
        """input (camelCase) -> upstream stage, for the inputs set."""
        dumped = self.model_dump(by_alias=True, exclude_none=True)
        return {k: str(v) for k, v in dumped.items()}


class PipelineStage(ApiModel):
    """One stage: a FineTuneJob spec (over the pipeline's defaults) and its inputs."""

    name: DNSLabel = Field(description="Stage name, unique in the pipeline (a DNS label).")
    spec: dict[str, Any] = Field(
        description="A partial FineTuneJob spec: with the pipeline's defaults under it and "
        "the inputs' outputs wired in, it must be a valid FineTuneJob spec. method is required."
    )
    inputs: StageInputs | None = Field(
        default=None, description="Earlier stages whose outputs this stage consumes."
    )


class PipelineOutput(ApiModel):
    """Where the stages write by default."""

    uri: OutputLocation = Field(
        description="Each stage's output.uri defaults to <uri>/<stage name>."
    )


class FineTunePipelineSpec(ApiModel):
    """Stages run in order, each a FineTuneJob, each consuming earlier stages' outputs."""

    model_config = ApiModel.model_config | {"json_schema_extra": validations(*SPEC_RULES)}

    stages: list[PipelineStage] = Field(
        min_length=1,
        max_length=MAX_STAGES,
        description="Run in order, one at a time: a stage's job is created only once every "
        "stage before it Succeeded.",
    )
    defaults: dict[str, Any] | None = Field(
        default=None,
        description="A partial FineTuneJob spec merged under every stage's spec (objects "
        "merge key by key; lists and values replace), e.g. resources. Not method or profile.",
    )
    output: PipelineOutput | None = Field(default=None, description="Default stage outputs.")
    retry_generation: int = Field(
        default=0,
        ge=0,
        description="Increment to retry a Failed pipeline: the failed stage's job is deleted "
        "and created again (it resumes from its checkpoints under the same output); stages "
        "that Succeeded never run again.",
    )


StagePhase = Literal[
    "Waiting", "Pending", "Validating", "Queued", "Running", "Suspended", "Succeeded", "Failed"
]
PipelinePhase = Literal["Pending", "Running", "Succeeded", "Failed"]
CONDITION_VALID = "Valid"
CONDITION_SUCCEEDED = "Succeeded"
CONDITION_FAILED = "Failed"


class StageStatus(ApiModel):
    """Where one stage stands."""

    name: str = Field(max_length=63, description="Stage name.")
    job: str | None = Field(default=None, max_length=253, description="Its FineTuneJob.")
    phase: StagePhase = Field(
        default="Waiting", description="Waiting (no job yet), else the job's phase."
    )
    output: str | None = Field(default=None, max_length=1024, description="Its output location.")
    start_time: datetime | None = Field(default=None, description="When its job started.")
    completion_time: datetime | None = Field(default=None, description="When its job ended.")
    retry_generation: int | None = Field(
        default=None, ge=0, description="The spec.retryGeneration its job was created under."
    )
    message: str | None = Field(default=None, max_length=4096, description="Latest state.")


class FineTunePipelineStatus(ApiModel):
    """Observed state of a FineTunePipeline, written only by the operator."""

    phase: PipelinePhase = Field(default="Pending", description="High-level phase.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=8,
        description="Valid, Succeeded, Failed.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation last acted on."
    )
    current_stage: str | None = Field(
        default=None, max_length=63, description="The stage running (or that failed)."
    )
    stages: list[StageStatus] = Field(
        default_factory=list, max_length=MAX_STAGES, description="Every stage, in order."
    )
    message: str | None = Field(default=None, max_length=4096, description="Latest state.")


class FineTunePipeline(ApiModel):
    """Fine-tuning stages chained into one resource (e.g. SFT -> reward model -> GRPO)."""

    api_version: Literal["kubetune.io/v1alpha1"] = Field(
        default=API_VERSION, description="APIVersion of this object."
    )
    kind: Literal["FineTunePipeline"] = Field(default=KIND, description="Kind of this object.")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard metadata.")
    spec: FineTunePipelineSpec = Field(description="The stages.")
    status: FineTunePipelineStatus | None = Field(default=None, description="Observed state.")


# -- pure helpers shared by the operator and the CLI -----------------------------------------
def order_problems(spec: FineTunePipelineSpec) -> list[Problem]:
    """Inputs naming a stage that is not earlier: the operator refuses such a pipeline
    (CEL has no list index, so the API server checks only that the stage exists)."""
    problems = []
    seen: set[str] = set()
    for index, stage in enumerate(spec.stages):
        for key, upstream in (stage.inputs.named() if stage.inputs else {}).items():
            if upstream not in seen:
                problems.append(
                    Problem(
                        f"spec.stages[{index}].inputs.{key}",
                        f"stage {stage.name!r} takes {key} from {upstream!r}, which is not an "
                        "earlier stage (inputs name only stages listed before)",
                    )
                )
        if "method" not in stage.spec:
            problems.append(Problem(f"spec.stages[{index}].spec.method", "Required value"))
        seen.add(stage.name)
    return problems


def stage_output(spec: FineTunePipelineSpec, stage: PipelineStage) -> str | None:
    """The stage's output location: its own spec.output.uri, else <output.uri>/<name>."""
    own = (stage.spec.get("output") or {}).get("uri")
    if own:
        return str(own)
    return f"{spec.output.uri.rstrip('/')}/{stage.name}" if spec.output else None


def _set(tree: dict[str, Any], path: tuple[str, ...], value: str) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def stage_job_spec(
    spec: FineTunePipelineSpec, stage: PipelineStage, outputs: Mapping[str, str]
) -> dict[str, Any]:
    """The FineTuneJob spec of ``stage``: defaults, then the default output, then the
    stage's own spec, then each input set to its upstream's output (``outputs``: stage ->
    output location). Raises KeyError for an input whose upstream has no output yet."""
    base: dict[str, Any] = dict(spec.defaults or {})
    output = stage_output(spec, stage)
    if output:
        base = deep_merge(base, {"output": {"uri": output}})
    merged = deep_merge(base, stage.spec)
    for key, upstream in (stage.inputs.named() if stage.inputs else {}).items():
        _set(merged, INPUT_FIELDS[key], outputs[upstream])
    return merged


def planned_outputs(spec: FineTunePipelineSpec) -> dict[str, str]:
    """Every stage's output location as planned (stages without one are left out)."""
    return {s.name: out for s in spec.stages if (out := stage_output(spec, s))}


def as_manifest(pipeline: FineTunePipeline) -> dict[str, Any]:
    """The object as the API server would store it (camelCase, no nulls)."""
    return pipeline.model_dump(mode="json", by_alias=True, exclude_none=True)


__all__ = [
    "ANNOTATION_LINEAGE",
    "ANNOTATION_RETRY",
    "INPUT_FIELDS",
    "KIND",
    "LABEL_PIPELINE",
    "LABEL_STAGE",
    "PLURAL",
    "FineTunePipeline",
    "FineTunePipelineSpec",
    "FineTunePipelineStatus",
    "PipelineStage",
    "StageInputs",
    "StageStatus",
    "order_problems",
    "planned_outputs",
    "stage_job_spec",
    "stage_output",
]
