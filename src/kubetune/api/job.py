"""The FineTuneJob resource: its spec (what the user wants) and the whole object."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from kubetune.api.base import ApiModel, cel, validations
from kubetune.api.combinations import combination_rules
from kubetune.api.common import (
    DNS_SUBDOMAIN_PATTERN,
    DNSSubdomain,
    EnvVar,
    LocalObjectReference,
)
from kubetune.api.continual import ContinualSpec, continual_rules
from kubetune.api.data_policy import DataPolicy, data_policy_rules
from kubetune.api.differential_privacy import DifferentialPrivacySpec, privacy_rules
from kubetune.api.evaluation import EvaluationSpec
from kubetune.api.infra import (
    CheckpointSpec,
    DistributedSpec,
    OutputSpec,
    ResourcesSpec,
    RunPolicy,
)
from kubetune.api.methods import METHOD_TRAITS, Method, cel_list, methods_where
from kubetune.api.moe import MoeSpec, moe_spec_rules
from kubetune.api.rlhf import RlhfSpec
from kubetune.api.sources import DatasetSpec, ModelSource
from kubetune.api.status import FineTuneJobStatus
from kubetune.api.training import HealthSpec, Hyperparameters, PeftSpec
from kubetune.api.vision import VISION_RULES, VisionSettings

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION: Final = "kubetune.io/v1alpha1"
KIND: Final = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj"]
CATEGORIES = ["kubetune", "all"]

# Any valid object name: the operator derives pod, Service and ConfigMap names that are
# always valid from it (shortened with a stable hash where needed).
MAX_JOB_NAME_LENGTH = 253


def _or_list(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _only_with(block: str) -> dict[str, Any]:
    """``block`` (e.g. ``peft.lora``) is refused for the methods whose traits lack it."""
    optional = LORA_OPTION_BLOCKS if block in LORA_OPTION_BLOCKS else ()
    methods = methods_where(lambda t: block in t.blocks or (t.lora_option and bool(optional)))
    parent = block.rpartition(".")[0]
    present = f"has(self.{parent}) && has(self.{block})" if parent else f"has(self.{block})"
    return cel(
        f"!({present}) || self.method in {cel_list(methods)}",
        f"{block} applies only to method {_or_list(methods)}",
        field_path=f".{block}",
    )


def _unsupported(method: str) -> dict[str, Any]:
    return cel(
        f"self.method != '{method}'",
        f"method {method} is not supported in this version of kubetune",
        field_path=".method",
        reason="FieldValueForbidden",
    )


#: what a method with ``lora_option`` may add to train a LoRA policy on a frozen base
LORA_OPTION_BLOCKS = ("peft", "peft.lora")


def _format_rule() -> dict[str, Any]:
    """Each method trains on its own dataset formats (``MethodTraits.formats``)."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, traits in METHOD_TRAITS.items():
        groups.setdefault(tuple(traits.formats), []).append(name)
    *cases, (last_formats, _) = groups.items()
    rule = f"self.dataset.format in {cel_list(last_formats)}"
    for formats, methods in reversed(cases):
        rule = (
            f"(self.method in {cel_list(tuple(methods))} ? "
            f"self.dataset.format in {cel_list(formats)} : {rule})"
        )
    said = "; ".join(
        f"{_or_list(tuple(methods))}: {_or_list(formats)}" for formats, methods in groups.items()
    )
    return cel(rule, f"dataset.format must suit the method ({said})", field_path=".dataset.format")


_ONLINE = cel_list(methods_where(lambda t: t.online))
_GROUPED = "['grpo', 'rloo']"
_IMMUTABLE = "cannot change after creation; create a new FineTuneJob instead"

SPEC_RULES: list[dict[str, Any]] = [
    *(_unsupported(m) for m in methods_where(lambda t: not t.supported)),
    *(
        _only_with(block)
        for parent, model in (("peft", PeftSpec), ("rlhf", RlhfSpec))
        for block in (parent, *(f"{parent}.{name}" for name in model.model_fields))
    ),
    cel(
        f"!(self.method in {_ONLINE}) || (has(self.rlhf) && has(self.rlhf.reward))",
        "methods ppo, grpo and rloo need rlhf.reward (a reward model or a verifiable check)",
        field_path=".rlhf",
    ),
    cel(
        f"!(self.method in {_GROUPED}) || !has(self.rlhf) || !has(self.rlhf.generation) || "
        "!has(self.rlhf.generation.samplesPerPrompt) || "
        "self.rlhf.generation.samplesPerPrompt >= 2",
        "grpo and rloo compare the samples of one prompt: samplesPerPrompt must be at least 2",
        field_path=".rlhf.generation.samplesPerPrompt",
    ),
    cel(
        f"!(self.method in {_ONLINE}) || self.distributed.strategy == 'ddp' || "
        "(self.distributed.strategy == 'deepspeed' && (!has(self.distributed.zeroStage) || "
        "self.distributed.zeroStage < 3))",
        "ppo, grpo and rloo generate with the whole policy on every GPU: use strategy ddp or "
        "deepspeed with zeroStage 1 or 2 (fsdp and ZeRO-3 shard the weights generation needs)",
        field_path=".distributed.strategy",
    ),
    *combination_rules(),  # method x strategy x batch shape (api/combinations.py)
    _format_rule(),
    *VISION_RULES,
    cel(
        "!(has(self.dataset.packing) && self.dataset.packing) || "
        f"self.method in {cel_list(methods_where(lambda t: t.packs))}",
        "dataset.packing applies only to methods full, lora, qlora and adapter (prefix and "
        "prompt tuning prepend virtual tokens per sample; reward models pool each row)",
        field_path=".dataset.packing",
    ),
    cel(
        "self.method != 'prefix' || !has(self.hyperparameters.gradientCheckpointing) || "
        "!self.hyperparameters.gradientCheckpointing",
        "hyperparameters.gradientCheckpointing does not apply to method prefix: recomputing a "
        "layer drops the prefix's key/value cache (use prompt tuning or LoRA to save memory)",
        field_path=".hyperparameters.gradientCheckpointing",
    ),
    cel(
        "!self.output.mergeAdapter || "
        f"self.method in {cel_list(methods_where(lambda t: t.mergeable))} || "
        f"(self.method in {cel_list(methods_where(lambda t: t.lora_option))} && "
        "has(self.peft) && has(self.peft.lora))",
        "output.mergeAdapter applies only to LoRA policies (methods lora and qlora, or a "
        "preference/RL method with peft.lora); other adapters cannot be folded into the "
        "base weights",
        field_path=".output.mergeAdapter",
    ),
    cel(
        "self.resources.nodes * self.resources.gpusPerNode >= 1",
        "the job needs at least one GPU in total (nodes x gpusPerNode)",
        field_path=".resources.gpusPerNode",
    ),
    {
        "rule": "self.resources.gpusPerNode == 0 || self.hyperparameters.globalBatchSize % "
        "(self.hyperparameters.microBatchSize * self.resources.nodes * "
        "self.resources.gpusPerNode) == 0",
        "message": "globalBatchSize must be a multiple of microBatchSize x nodes x gpusPerNode "
        "(gradient accumulation steps are derived from it)",
        "fieldPath": ".hyperparameters.globalBatchSize",
    },
    cel(
        "!has(self.evaluation) || !has(self.evaluation.gates) || "
        "self.evaluation.gates.all(g, !g.metric.startsWith('heldOut/')) || "
        "has(self.dataset.eval) || !has(self.dataset.evalSplit) || self.dataset.evalSplit > 0.0",
        "gates on heldOut metrics need an evaluation split: set dataset.eval, or leave "
        "dataset.evalSplit unset or above 0",
        field_path=".evaluation.gates",
    ),
    cel(
        "!has(self.evaluation) || !has(self.evaluation.sets) || "
        "size(self.evaluation.sets) == 0 || self.method != 'reward'",
        "evaluation.sets need a generative model: method reward trains a scorer (use its "
        "output as a rewardModel metric of another job instead)",
        field_path=".evaluation.sets",
    ),
    # Transition rules: evaluated on update only (they name oldSelf).
    cel("self.method == oldSelf.method", f"method {_IMMUTABLE}", field_path=".method"),
    cel("self.model == oldSelf.model", f"model {_IMMUTABLE}", field_path=".model"),
    cel("self.dataset == oldSelf.dataset", f"dataset {_IMMUTABLE}", field_path=".dataset"),
    cel(
        "self.hyperparameters == oldSelf.hyperparameters",
        f"hyperparameters {_IMMUTABLE}",
        field_path=".hyperparameters",
    ),
    cel(
        "has(self.peft) == has(oldSelf.peft) && (!has(self.peft) || self.peft == oldSelf.peft)",
        f"peft {_IMMUTABLE}",
        field_path=".peft",
    ),
    cel("self.output == oldSelf.output", f"output {_IMMUTABLE}", field_path=".output"),
    cel(
        "has(self.evaluation) == has(oldSelf.evaluation) && "
        "(!has(self.evaluation) || self.evaluation == oldSelf.evaluation)",
        f"evaluation {_IMMUTABLE}",
        field_path=".evaluation",
    ),
    cel(
        "has(self.profile) == has(oldSelf.profile) && "
        "(!has(self.profile) || self.profile == oldSelf.profile)",
        f"profile {_IMMUTABLE} (the profiles were applied when the job was first resolved)",
        field_path=".profile",
    ),
    *moe_spec_rules(),  # spec.moe (api/moe.py)
    cel(
        "oldSelf.runPolicy.suspend || (self.resources == oldSelf.resources && "
        "self.distributed == oldSelf.distributed)",
        "resources and distributed can change only while the job is suspended "
        "(runPolicy.suspend: true)",
        field_path=".resources",
    ),
    *continual_rules(),  # spec.continual (issue 16: continual learning)
    *privacy_rules(),  # spec.differentialPrivacy (issue 17: DP-SGD)
    *data_policy_rules(),  # spec.dataPolicy (issue 17: personal data)
]

Image = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^\S+$")]


class FineTuneJobSpec(ApiModel):
    """What to fine-tune, on which data, with which method and on how many GPUs."""

    model_config = ApiModel.model_config | {"json_schema_extra": validations(*SPEC_RULES)}

    method: Method = Field(
        description="Training method: full (all weights), lora/qlora (low-rank adapters; "
        "qlora on a 4-bit base), prefix/prompt (virtual tokens), adapter (bottleneck "
        "adapter layers), reward (reward model on preference pairs), dpo, kto, orpo "
        "(preference optimisation), ppo, grpo, rloo (online RL against a reward). The "
        "preference and RL methods train a LoRA policy when peft.lora is set."
    )
    model: ModelSource = Field(description="The base model.")
    dataset: DatasetSpec = Field(description="Training and evaluation data.")
    data_policy: DataPolicy | None = Field(
        default=None,
        description="Rules the training and evaluation data must follow, checked in the "
        "validation pass before any GPU is requested (personal data: refuse, redact or "
        "allow). Unset: no checks beyond the format's.",
    )
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters, description="Optimisation settings."
    )
    peft: PeftSpec | None = Field(
        default=None, description="Settings of the PEFT method; only with PEFT methods."
    )
    rlhf: RlhfSpec | None = Field(
        default=None, description="Settings of the RLHF stage; only with reward, ppo, dpo."
    )
    vision: VisionSettings | None = Field(
        default=None,
        description="Vision-language fine-tuning (dataset.format visionChat): which parts of "
        "the model train. Default with visionChat: frozen vision tower, trained projector.",
    )
    moe: MoeSpec | None = Field(
        default=None,
        description="Mixture-of-experts settings (router freeze, expert-selective training, "
        "load-balancing loss); only for a MoE base model and methods full, lora, dpo, kto, "
        "orpo.",
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="The gang of pods and its GPUs."
    )
    distributed: DistributedSpec = Field(
        default_factory=DistributedSpec, description="Data/model parallel strategy."
    )
    checkpoint: CheckpointSpec = Field(
        default_factory=CheckpointSpec, description="Checkpointing and resumption."
    )
    output: OutputSpec = Field(description="Where results go.")
    evaluation: EvaluationSpec | None = Field(
        default=None,
        description="Evaluation after training against a baseline, and the gates that "
        "decide whether the tuned model is promotable (status.evaluation, condition "
        "Promotable). Without it a succeeded job is promotable.",
    )
    health: HealthSpec = Field(default_factory=HealthSpec, description="Numerical health checks.")
    continual: ContinualSpec | None = Field(
        default=None,
        description="Continual learning: earlier tasks whose eval loss must not rise "
        "(forgetting is measured and reported), protected by replay and/or a regularizer "
        "(EWC, L2-SP). Only with methods trained on language-modelling data.",
    )
    differential_privacy: DifferentialPrivacySpec | None = Field(
        default=None,
        description="Differential privacy (DP-SGD): Poisson-sampled steps, every row's "
        "gradient clipped to maxGradNorm, Gaussian noise, and an (epsilon, delta) budget the "
        "run never exceeds. Only methods full and lora, on one GPU, without packing.",
    )
    run_policy: RunPolicy = Field(
        default_factory=RunPolicy, description="Retries, deadlines, suspension, queueing."
    )
    profile: DNSSubdomain | None = Field(
        default=None,
        description="Name of a preset whose values fill what this spec leaves unset: the "
        "FineTuneProfile of that name in the job's namespace, else the "
        "ClusterFineTuneProfile of that name. Applied over the namespace's `default` "
        "FineTuneProfile and the matching ClusterFineTuneProfiles; this spec wins over all "
        "of them (see status.profiles).",
    )
    image: Image | None = Field(
        default=None, description="Trainer image; default: the operator's configured image."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Image pull policy of the trainer containers."
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, max_length=8, description="Secrets for pulling the image."
    )
    service_account_name: DNSSubdomain | None = Field(
        default=None,
        description="ServiceAccount of the training pods (for workload identity to the "
        "object store). Its token is not mounted: the trainer needs no API access.",
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        description="Extra environment variables; credentials only via valueFrom.secretKeyRef.",
    )


class ObjectMeta(BaseModel):
    """The parts of Kubernetes object metadata kubetune reads; the rest passes through."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str | None = None
    namespace: str | None = None
    generate_name: str | None = Field(default=None, alias="generateName")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    generation: int | None = None


_CEL_SUBDOMAIN = DNS_SUBDOMAIN_PATTERN.replace("\\", "\\\\")  # escaped for a CEL literal

ROOT_RULES: list[dict[str, Any]] = [
    # The API server checks object names itself; the rule gives `kubetune validate` the
    # same verdict.
    cel(
        f"!has(self.metadata.name) || (self.metadata.name.size() <= {MAX_JOB_NAME_LENGTH} "
        f"&& self.metadata.name.matches('{_CEL_SUBDOMAIN}'))",
        f"metadata.name must be a DNS subdomain: at most {MAX_JOB_NAME_LENGTH} lower-case "
        "letters, digits, '-' and '.', starting and ending with a letter or digit "
        "(e.g. llama3.1-8b-sft)",
    ),
]


class FineTuneJob(ApiModel):
    """A fine-tuning run of an LLM on Kubernetes."""

    api_version: Literal["kubetune.io/v1alpha1"] = Field(
        default=API_VERSION, description="APIVersion of this object."
    )
    kind: Literal["FineTuneJob"] = Field(default=KIND, description="Kind of this object.")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard metadata.")
    spec: FineTuneJobSpec = Field(description="Desired state.")
    status: FineTuneJobStatus | None = Field(default=None, description="Observed state.")
