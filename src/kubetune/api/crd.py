"""Generate the FineTuneJob CustomResourceDefinition from the pydantic models.

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
            "status": structural_schema(FineTuneJobStatus),
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


def render_crd_yaml() -> str:
    """The CRD as YAML, byte-for-byte stable for the drift check."""
    header = "# Generated by `kubetune crd` from kubetune/api (pydantic models). Do not edit.\n"
    body = yaml.safe_dump(
        custom_resource_definition(), sort_keys=False, width=100, allow_unicode=True
    )
    return header + "---\n" + body
