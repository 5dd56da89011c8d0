"""Generate the CustomResourceDefinitions (FineTuneJob, FineTuneProfile,
ClusterFineTuneProfile, ModelRollout, FineTunePipeline) from the pydantic models.

The models are the single source of truth: types, enums, bounds, patterns, defaults,
descriptions and CEL rules all come from them. pydantic emits JSON Schema 2020-12; the
API server wants a *structural* OpenAPI v3 schema, so refs are inlined, ``Optional``
unions collapsed, ``const`` turned into enums and exclusive bounds rewritten.
"""

from __future__ import annotations

import copy
import typing
from typing import Any

import yaml
from pydantic import BaseModel

from kubetune.api import pipeline, rollout
from kubetune.api.job import (
    CATEGORIES,
    GROUP,
    KIND,
    PLURAL,
    ROOT_RULES,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    FineTuneJobSpec,
)
from kubetune.api.methods import METHOD_TRAITS
from kubetune.api.profiles import (
    CLUSTER_PROFILE_KIND,
    CLUSTER_PROFILE_PLURAL,
    CLUSTER_PROFILE_SHORT_NAMES,
    CLUSTER_PROFILE_SINGULAR,
    NOT_IN_PROFILES,
    PROFILE_CATEGORIES,
    PROFILE_KIND,
    PROFILE_PLURAL,
    PROFILE_SHORT_NAMES,
    PROFILE_SINGULAR,
    ClusterFineTuneProfileSpec,
    FineTuneProfileSpec,
)
from kubetune.api.status import FineTuneJobStatus

CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_FILENAME = f"{GROUP}_{PLURAL}.yaml"

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Phase",
        "type": "string",
        "jsonPath": ".status.phase",
        "description": "Lifecycle phase.",
    },
    {
        "name": "Method",
        "type": "string",
        "jsonPath": ".spec.method",
        "description": "Training method.",
    },
    {
        "name": "Model",
        "type": "string",
        "jsonPath": ".spec.model.uri",
        "description": "Base model.",
    },
    {
        "name": "Progress",
        "type": "string",
        "jsonPath": ".status.progress.summary",
        "description": "Optimizer steps done / planned.",
    },
    {
        "name": "GPUs",
        "type": "integer",
        "jsonPath": ".status.gpus",
        "description": "GPUs requested by the gang.",
    },
    {
        "name": "Attempts",
        "type": "integer",
        "jsonPath": ".status.attempts",
        "priority": 1,
        "description": "Gangs started (1 + restarts).",
    },
    {
        "name": "Loss",
        "type": "number",
        "jsonPath": ".status.progress.loss",
        "priority": 1,
        "description": "Latest training loss.",
    },
    {
        "name": "ETA",
        "type": "integer",
        "jsonPath": ".status.progress.etaSeconds",
        "priority": 1,
        "description": "Estimated seconds left.",
    },
    {
        "name": "GPU-Hours",
        "type": "number",
        "jsonPath": ".status.gpuHours.allocated",
        "priority": 1,
        "description": "GPU-hours held by the job's pods, over all attempts.",
    },
    {
        "name": "Goodput",
        "type": "number",
        "jsonPath": ".status.gpuHours.goodput",
        "priority": 1,
        "description": "Share (0-1) of the GPU-hours that produced training steps kept.",
    },
    {
        "name": "Budget",
        "type": "number",
        "jsonPath": ".spec.runPolicy.gpuHourBudget",
        "priority": 1,
        "description": "GPU-hour budget (spec.runPolicy.gpuHourBudget), if any.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

_DROP = {"title", "additionalProperties", "propertyNames", "$defs", "discriminator"}


def _models_by_name(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model reachable from ``root``, keyed as pydantic names its $defs."""
    found: dict[str, type[BaseModel]] = {}
    todo: list[Any] = [root]
    while todo:
        tp = todo.pop()
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp.__name__ in found:
                continue
            found[tp.__name__] = tp
            todo.extend(f.annotation for f in tp.model_fields.values())
        else:
            todo.extend(typing.get_args(tp))
    return found


def _sub_model_default(model: type[BaseModel] | None, alias: str) -> dict[str, Any] | None:
    """The CRD default of a field whose default is a whole sub-model.

    The API server then creates the object, so CEL rules may rely on e.g.
    ``self.resources.nodes`` existing. It is the fully defaulted object, not ``{}``:
    the server checks a default against the object's own rules without defaulting it.
    """
    if model is None:
        return None
    for name, field in model.model_fields.items():
        if (field.alias or name) == alias and field.default_factory is not None:
            factory = field.default_factory
            if isinstance(factory, type) and issubclass(factory, BaseModel):
                return factory().model_dump(mode="json", by_alias=True, exclude_none=True)
    return None


class _Converter:
    def __init__(self, defs: dict[str, Any], models: dict[str, type[BaseModel]]) -> None:
        self.defs = defs
        self.models = models

    def convert(self, node: dict[str, Any], model_name: str | None = None) -> dict[str, Any]:
        node = copy.deepcopy(node)
        if "$ref" in node:
            ref_name = node.pop("$ref").rsplit("/", 1)[-1]
            target = self.convert(self.defs[ref_name], ref_name)
            # The field's own description/default win over the model's docstring.
            target.update({k: v for k, v in node.items() if k not in _DROP})
            return target
        if "anyOf" in node:
            branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
            if len(branches) != 1:
                raise ValueError(f"cannot express union {branches} structurally")
            outer = {k: v for k, v in node.items() if k not in _DROP and k != "default"}
            if node.get("default") is not None:
                outer["default"] = node["default"]
            inner = self.convert(branches[0])
            inner.update(outer)
            return inner
        if "patternProperties" in node:
            raise ValueError("patternProperties are not allowed in a structural schema")
        if "const" in node:
            node["enum"] = [node.pop("const")]
        if "exclusiveMinimum" in node:
            node["minimum"] = node.pop("exclusiveMinimum")
            node["exclusiveMinimum"] = True
        if "exclusiveMaximum" in node:
            node["maximum"] = node.pop("exclusiveMaximum")
            node["exclusiveMaximum"] = True
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _DROP:
                continue
            if key == "properties":
                model = self.models.get(model_name) if model_name else None
                props = {}
                for alias, sub in value.items():
                    converted = self.convert(sub)
                    default = _sub_model_default(model, alias)
                    if "default" not in converted and default is not None:
                        converted["default"] = default
                    props[alias] = converted
                out["properties"] = props
            elif key == "items":
                out["items"] = self.convert(value)
            else:
                out[key] = value
        if node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
            out["additionalProperties"] = self.convert(node["additionalProperties"])
        if node.get("type") == "array" and "maxItems" not in out and "maxLength" in out:
            out["maxItems"] = out.pop("maxLength")
        return out


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    conv = _Converter(raw.get("$defs", {}), _models_by_name(model))
    return conv.convert(raw, model.__name__)


def _status_schema() -> dict[str, Any]:
    """FineTuneJobStatus; its ``profileDefaults`` typed as a profile's partial spec."""
    status = structural_schema(FineTuneJobStatus)
    frozen = status["properties"]["profileDefaults"]
    status["properties"]["profileDefaults"] = {
        **profile_fragment_schema(),
        "description": frozen["description"],
    }
    return status


def openapi_schema() -> dict[str, Any]:
    """The whole object schema, as it goes into the CRD version."""
    return {
        "type": "object",
        "description": "FineTuneJob fine-tunes a large language model on a gang of "
        "torchrun pods (full fine-tuning, PEFT or RLHF).",
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "APIVersion defines the versioned schema of this object.",
            },
            "kind": {"type": "string", "description": "Kind is the type of this object."},
            "metadata": {"type": "object"},
            "spec": structural_schema(FineTuneJobSpec),
            "status": _status_schema(),
        },
        "x-kubernetes-validations": ROOT_RULES,
    }


def custom_resource_definition() -> dict[str, Any]:
    """The CRD object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {
                "app.kubernetes.io/name": "kubetune",
                "app.kubernetes.io/part-of": "kubetune",
            },
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": CATEGORIES,
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


_HEADER = "# Generated by `kubetune crd` from kubetune/api (pydantic models). Do not edit.\n"


def _render(crd: dict[str, Any]) -> str:
    body = yaml.safe_dump(crd, sort_keys=False, width=100, allow_unicode=True)
    return _HEADER + "---\n" + body


def render_crd_yaml() -> str:
    """The FineTuneJob CRD as YAML, byte-for-byte stable for the drift check."""
    return _render(custom_resource_definition())


# -- profiles (team defaults) -------------------------------------------------------------
def partial_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every field optional: what a profile may say of a spec.

    Along objects, ``required`` and ``default`` go (a profile sets only what it names, and
    a default the API server filled in would override lower layers) and so do the CEL rules
    (cross-field rules are checked on the merged spec, where every field is known). Types,
    enums, bounds and patterns stay, so the API server refuses a wrong value in a profile.
    List items keep everything: lists replace, so an item in a profile is a whole item.
    """
    out = {k: copy.deepcopy(v) for k, v in schema.items()}
    out.pop("required", None)
    out.pop("default", None)
    out.pop("x-kubernetes-validations", None)
    if "properties" in out:
        out["properties"] = {k: partial_schema(v) for k, v in out["properties"].items()}
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = partial_schema(out["additionalProperties"])
    return out


def profile_fragment_schema() -> dict[str, Any]:
    """The schema of a profile's ``defaults`` and of each ``methods.<method>``."""
    spec = partial_schema(structural_schema(FineTuneJobSpec))
    for name in NOT_IN_PROFILES:
        spec["properties"].pop(name, None)
    spec["description"] = (
        "A partial FineTuneJob spec (see FineTuneJob.spec for every field): any field may be "
        "left out; types, enums and bounds are FineTuneJob's. Not method or profile."
    )
    return spec


def profile_spec_schema(cluster: bool) -> dict[str, Any]:
    """The ``spec`` of FineTuneProfile (``cluster``: of ClusterFineTuneProfile)."""
    spec = structural_schema(ClusterFineTuneProfileSpec if cluster else FineTuneProfileSpec)
    fragment = profile_fragment_schema()
    props = spec["properties"]
    props["defaults"] = {**fragment, "description": props["defaults"]["description"]}
    methods = list(METHOD_TRAITS)
    props["methods"] = {
        "type": "object",
        "description": props["methods"]["description"],
        "maxProperties": len(methods),
        "additionalProperties": fragment,
        "x-kubernetes-validations": [
            {
                "rule": f"self.all(m, m in {methods!r})",
                "message": f"methods are keyed by method: {', '.join(methods)}",
            }
        ],
    }
    return spec


_PROFILE_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Description",
        "type": "string",
        "jsonPath": ".spec.description",
        "description": "What the profile is for.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _definition(
    *,
    names: dict[str, Any],
    scope: str,
    columns: list[dict[str, Any]],
    description: str,
    properties: dict[str, Any],
    required: list[str] | None = None,
    status: bool = False,
) -> dict[str, Any]:
    """A one-version CRD of kubetune's group (``names``: kind, plural, singular, shortNames,
    categories; ``properties``: the schemas of spec and, with ``status``, status)."""
    schema: dict[str, Any] = {
        "type": "object",
        "description": description,
        **({"required": required} if required else {}),
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "APIVersion defines the versioned schema of this object.",
            },
            "kind": {"type": "string", "description": "Kind is the type of this object."},
            "metadata": {"type": "object"},
            **properties,
        },
    }
    version: dict[str, Any] = {"name": VERSION, "served": True, "storage": True}
    if status:
        version["subresources"] = {"status": {}}
    version["additionalPrinterColumns"] = columns
    version["schema"] = {"openAPIV3Schema": schema}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{names['plural']}.{GROUP}",
            "labels": {
                "app.kubernetes.io/name": "kubetune",
                "app.kubernetes.io/part-of": "kubetune",
            },
        },
        "spec": {
            "group": GROUP,
            "names": {"kind": names["kind"], "listKind": f"{names['kind']}List", **names},
            "scope": scope,
            "versions": [version],
        },
    }


def profile_definition(cluster: bool) -> dict[str, Any]:
    """The FineTuneProfile CRD (``cluster``: the ClusterFineTuneProfile CRD)."""
    kind, plural, singular, short = (
        (
            CLUSTER_PROFILE_KIND,
            CLUSTER_PROFILE_PLURAL,
            CLUSTER_PROFILE_SINGULAR,
            CLUSTER_PROFILE_SHORT_NAMES,
        )
        if cluster
        else (PROFILE_KIND, PROFILE_PLURAL, PROFILE_SINGULAR, PROFILE_SHORT_NAMES)
    )
    what = (
        "ClusterFineTuneProfile holds FineTuneJob defaults for the namespaces its "
        "namespaceSelector matches, or a preset jobs of any namespace name in spec.profile."
        if cluster
        else "FineTuneProfile holds FineTuneJob defaults for one namespace: the profile named "
        "`default` applies to every job there, others to the jobs that name them in spec.profile."
    )
    return _definition(
        names={
            "kind": kind,
            "plural": plural,
            "singular": singular,
            "shortNames": short,
            "categories": PROFILE_CATEGORIES,
        },
        scope="Cluster" if cluster else "Namespaced",
        columns=_PROFILE_COLUMNS,
        description=what,
        properties={"spec": profile_spec_schema(cluster)},
    )


def render_crds() -> dict[str, str]:
    """Every CRD kubetune ships: file name -> YAML (FineTuneJob's is :func:`render_crd_yaml`)."""
    files = {CRD_FILENAME: render_crd_yaml()}
    for cluster in (False, True):
        crd = profile_definition(cluster)
        files[f"{GROUP}_{crd['spec']['names']['plural']}.yaml"] = _render(crd)
    rollouts = rollout_definition()
    files[f"{GROUP}_{rollouts['spec']['names']['plural']}.yaml"] = _render(rollouts)
    pipelines = pipeline_definition()
    files[f"{GROUP}_{pipelines['spec']['names']['plural']}.yaml"] = _render(pipelines)
    return files


# -- ModelRollout ---------------------------------------------------------------------------
_ROLLOUT_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Phase."},
    {
        "name": "Step",
        "type": "integer",
        "jsonPath": ".status.currentStep",
        "description": "Index of the current step (from 0).",
    },
    {
        "name": "Weight",
        "type": "integer",
        "jsonPath": ".status.candidateWeight",
        "description": "Percent of the traffic sent to the candidate.",
    },
    {
        "name": "Candidate",
        "type": "string",
        "jsonPath": ".spec.candidate.modelName",
        "description": "The model rolled out.",
    },
    {
        "name": "Baseline",
        "type": "string",
        "jsonPath": ".spec.baseline.modelName",
        "description": "The model now serving.",
    },
    {
        "name": "Message",
        "type": "string",
        "jsonPath": ".status.message",
        "priority": 1,
        "description": "The latest state in words.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def rollout_definition() -> dict[str, Any]:
    """The ModelRollout CRD."""
    return _definition(
        names={
            "kind": rollout.KIND,
            "plural": rollout.PLURAL,
            "singular": rollout.SINGULAR,
            "shortNames": rollout.SHORT_NAMES,
            "categories": rollout.CATEGORIES,
        },
        scope="Namespaced",
        columns=_ROLLOUT_COLUMNS,
        description="ModelRollout rolls a tuned model out beside the model it replaces through "
        "a weighted route, analyses both on Prometheus and promotes or rolls back the candidate.",
        properties={
            "spec": structural_schema(rollout.ModelRolloutSpec),
            "status": structural_schema(rollout.ModelRolloutStatus),
        },
        required=["spec"],
        status=True,
    )


# -- FineTunePipeline -----------------------------------------------------------------------
_PIPELINE_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Phase."},
    {
        "name": "Stage",
        "type": "string",
        "jsonPath": ".status.currentStage",
        "description": "The stage running (or that failed).",
    },
    {
        "name": "Message",
        "type": "string",
        "jsonPath": ".status.message",
        "priority": 1,
        "description": "The latest state in words.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def pipeline_stage_spec_schema() -> dict[str, Any]:
    """A stage's ``spec``: FineTuneJob's spec made partial as for profiles (types, enums
    and bounds kept), but with ``method`` required and ``profile`` allowed."""
    spec = partial_schema(structural_schema(FineTuneJobSpec))
    spec["required"] = ["method"]
    spec["description"] = (
        "A partial FineTuneJob spec (see FineTuneJob.spec for every field): laid over the "
        "pipeline's defaults, with the inputs' outputs wired in, it must be a valid "
        "FineTuneJob spec. method is required."
    )
    return spec


def pipeline_definition() -> dict[str, Any]:
    """The FineTunePipeline CRD."""
    spec = structural_schema(pipeline.FineTunePipelineSpec)
    props = spec["properties"]
    stage = props["stages"]["items"]["properties"]
    stage["spec"] = {**pipeline_stage_spec_schema(), "description": stage["spec"]["description"]}
    props["defaults"] = {
        **profile_fragment_schema(),
        "description": props["defaults"]["description"],
    }
    return _definition(
        names={
            "kind": pipeline.KIND,
            "plural": pipeline.PLURAL,
            "singular": pipeline.SINGULAR,
            "shortNames": pipeline.SHORT_NAMES,
            "categories": pipeline.CATEGORIES,
        },
        scope="Namespaced",
        columns=_PIPELINE_COLUMNS,
        description="FineTunePipeline runs fine-tuning stages in order (e.g. SFT, then a reward "
        "model, then GRPO against it), one FineTuneJob per stage, each stage's output wired "
        "into the stages that name it as an input.",
        properties={
            "spec": spec,
            "status": structural_schema(pipeline.FineTunePipelineStatus),
        },
        required=["spec"],
        status=True,
    )
