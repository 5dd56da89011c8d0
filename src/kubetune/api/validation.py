"""Validate FineTuneJob (and ModelRollout, FineTunePipeline) manifests with the API server's
verdicts.

Three layers, none hand-duplicated: pydantic (types, enums, bounds, patterns — the
source of the CRD schema), the CRD's CEL rules evaluated by :mod:`kubetune.api.cel`,
and soft recommendations that only warn.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from kubetune.api import cel
from kubetune.api import rollout as rollout_api
from kubetune.api.common import PATTERN_HELP
from kubetune.api.crd import openapi_schema, rollout_definition
from kubetune.api.defaults import RECOMMENDED_EPOCHS, RECOMMENDED_WEIGHT_DECAY
from kubetune.api.job import API_VERSION, KIND, FineTuneJob
from kubetune.api.methods import METHOD_TRAITS
from kubetune.api.problems import Problem


@dataclass
class ValidationReport:
    """The verdict on one manifest."""

    job: FineTuneJob | None
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


@lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    return openapi_schema()


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(("function-", "constrained-")):
            continue  # pydantic's internal validator names, not fields
        else:
            path = f"{path}.{part}" if path else part
    return path


_MESSAGES = {
    "missing": "Required value",
    "extra_forbidden": "unknown field (check the spelling; fields are camelCase)",
}


def _pydantic_message(err: ErrorDetails) -> str:
    kind = err["type"]
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    if kind == "string_pattern_mismatch":
        pattern = str((err.get("ctx") or {}).get("pattern", ""))
        expected = PATTERN_HELP.get(pattern, "does not have the expected form")
        return f"{err['input']!r} is not a valid value: {expected}"
    if kind in ("literal_error", "enum"):
        return f"Unsupported value {err['input']!r}: {err['msg'].replace('Input s', 's')}"
    return f"Invalid value {err['input']!r}: {err['msg'].replace('Input s', 's')}"


def _envelope_problems(doc: Mapping[str, Any]) -> list[Problem]:
    problems = []
    if doc.get("apiVersion") != API_VERSION:
        problems.append(Problem("apiVersion", f"must be {API_VERSION}"))
    if doc.get("kind") != KIND:
        problems.append(Problem("kind", f"must be {KIND}"))
    return problems


def _recommendations(job: FineTuneJob) -> list[Problem]:
    spec = job.spec
    hp = spec.hyperparameters
    traits = METHOD_TRAITS[spec.method]
    warnings = []
    low, high = traits.learning_rate_range
    if hp.learning_rate is not None and not low <= hp.learning_rate <= high:
        warnings.append(
            Problem(
                "spec.hyperparameters.learningRate",
                f"{hp.learning_rate:g} is outside the recommended range {low:g}..{high:g} "
                f"for method {spec.method}",
                "warning",
            )
        )
    if hp.epochs is not None and not RECOMMENDED_EPOCHS[0] <= hp.epochs <= RECOMMENDED_EPOCHS[1]:
        warnings.append(
            Problem(
                "spec.hyperparameters.epochs",
                f"{hp.epochs:g} is outside the usual {RECOMMENDED_EPOCHS[0]:g}.."
                f"{RECOMMENDED_EPOCHS[1]:g} epochs of fine-tuning (risk of "
                + ("underfitting)" if hp.epochs < RECOMMENDED_EPOCHS[0] else "overfitting)"),
                "warning",
            )
        )
    wd_low, wd_high = RECOMMENDED_WEIGHT_DECAY
    if hp.weight_decay is not None and not wd_low <= hp.weight_decay <= wd_high:
        warnings.append(
            Problem(
                "spec.hyperparameters.weightDecay",
                f"{hp.weight_decay:g} is above the recommended {wd_low:g}..{wd_high:g}",
                "warning",
            )
        )
    if spec.model.trust_remote_code:
        warnings.append(
            Problem(
                "spec.model.trustRemoteCode",
                "the model's own Python code will run in the training pods",
                "warning",
            )
        )
    return warnings


def _json_default(value: Any) -> Any:
    """Mappings that are not dicts (kopf bodies) as dicts; anything else as a string."""
    return dict(value) if isinstance(value, Mapping) else str(value)


def _as_json(value: Any) -> Any:
    """``value`` as the API server sees it: JSON types only."""
    return json.loads(json.dumps(value, default=_json_default))


def parse_manifest(doc: Mapping[str, Any]) -> FineTuneJob:
    """``doc`` as the API server reads it: JSON, camelCase names only, no coercion.

    Strict: ``learning_rate`` (the Python name) is an unknown field, ``"64"`` is not an
    integer and ``"yes"`` is not a boolean, exactly as the server's structural schema
    says. (Code may still build models by Python name; manifests may not.) Values YAML
    loads as other types (dates) are sent as strings, as kubectl sends them.
    """
    text = json.dumps(doc, default=_json_default)
    return FineTuneJob.model_validate_json(text, strict=True, by_alias=True, by_name=False)


@lru_cache(maxsize=1)
def _rollout_schema() -> dict[str, Any]:
    schema: dict[str, Any] = rollout_definition()["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"
    ]
    return schema


def validate_rollout_manifest(
    doc: Mapping[str, Any], old: Mapping[str, Any] | None = None
) -> ValidationReport:
    """A ModelRollout: its types and bounds (pydantic) and its CEL rules, as the API server
    checks them (the report's ``job`` is always None: it is not a FineTuneJob)."""
    errors = []
    if doc.get("apiVersion") != API_VERSION:
        errors.append(Problem("apiVersion", f"must be {API_VERSION}"))
    try:
        parsed = rollout_api.ModelRollout.model_validate_json(
            json.dumps(doc, default=_json_default), strict=True, by_alias=True, by_name=False
        )
    except ValidationError as exc:
        errors += [
            Problem(_loc_to_path(err["loc"]), _pydantic_message(err)) for err in exc.errors()
        ]
        # As for jobs: the cross-field rules that can run still run, so one pass says all.
        reported = {p.path for p in errors}
        defaulted = cel.apply_defaults(_rollout_schema(), _as_json(doc))
        errors += [
            p
            for p in cel.check(_rollout_schema(), defaulted, None, strict=False)
            if p.path not in reported
        ]
        return ValidationReport(None, errors)
    obj = rollout_api.as_manifest(parsed)
    obj["metadata"] = _as_json(doc.get("metadata") or {})
    obj.pop("status", None)
    old_obj = None
    if old is not None:
        old_obj = rollout_api.as_manifest(rollout_api.ModelRollout.model_validate(_as_json(old)))
    errors += cel.check(_rollout_schema(), obj, old_obj)
    return ValidationReport(None, errors)


def validate_manifest(doc: Any, old: Mapping[str, Any] | None = None) -> ValidationReport:
    """Validate one manifest (a parsed YAML document); ``old`` for an update."""
    if not isinstance(doc, Mapping):
        return ValidationReport(None, [Problem("", "a manifest must be a YAML mapping")])
    if doc.get("kind") == rollout_api.KIND:
        return validate_rollout_manifest(doc, old)
    if doc.get("kind") == "FineTunePipeline":
        from kubetune.api.pipeline_validation import validate_pipeline

        return ValidationReport(None, validate_pipeline(doc)[1])
    errors = _envelope_problems(doc)
    try:
        job = parse_manifest(doc)
    except ValidationError as exc:
        errors += [
            Problem(_loc_to_path(err["loc"]), _pydantic_message(err)) for err in exc.errors()
        ]
        # Still run the cross-field rules that can run, so one pass reports everything.
        reported = {p.path for p in errors}
        defaulted = cel.apply_defaults(_schema(), dict(doc))
        errors += [
            p for p in cel.check(_schema(), defaulted, None, strict=False) if p.path not in reported
        ]
        return ValidationReport(None, errors)
    # The CEL rules see the defaulted object, as they do after API-server defaulting.
    obj = job.model_dump(mode="json", by_alias=True, exclude_none=True)
    obj["metadata"] = _as_json(doc.get("metadata") or {})
    old_obj = None
    if old is not None:
        old_job = parse_manifest(old)
        old_obj = old_job.model_dump(mode="json", by_alias=True, exclude_none=True)
        old_obj["metadata"] = _as_json(old.get("metadata") or {})
    obj.pop("status", None)
    errors += cel.check(_schema(), obj, old_obj)
    return ValidationReport(job if not errors else None, errors, _recommendations(job))


def load_documents(path: Path) -> Iterator[tuple[str, Any]]:
    """Every YAML document in ``path`` (a file or a directory of .yaml files)."""
    files = sorted(path.rglob("*.yaml")) if path.is_dir() else [path]
    for file in files:
        with file.open() as handle:
            for index, doc in enumerate(yaml.safe_load_all(handle)):
                if doc is not None:
                    yield (f"{file}#{index}" if index else str(file)), doc
