"""Validate a FineTunePipeline as the API server would, then each stage as the job it becomes.

Three passes, so one run says everything: the pipeline's own types and CEL rules (what the
API server refuses), the partial stage specs and defaults against FineTuneJob's partial
schema (as for profiles), and the stage order (which CEL cannot express). When those pass,
every stage is built exactly as the operator will build it (:func:`stage_job_spec`) and
validated as a whole FineTuneJob: a stage that would be refused at creation is refused now.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from kubetune.api import cel
from kubetune.api import pipeline as api
from kubetune.api.crd import (
    pipeline_definition,
    pipeline_stage_spec_schema,
    profile_fragment_schema,
)
from kubetune.api.job import API_VERSION
from kubetune.api.problems import Problem
from kubetune.api.profiles import check_fragment


@lru_cache(maxsize=1)
def pipeline_schema() -> dict[str, Any]:
    schema: dict[str, Any] = pipeline_definition()["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"
    ]
    return schema


def _problem(text: str) -> Problem:
    path, sep, message = text.partition(": ")
    return Problem(path, message) if sep else Problem("", text)


def fragment_problems(spec: Mapping[str, Any]) -> list[Problem]:
    """Stage specs and defaults checked against FineTuneJob's partial schema."""
    problems = [
        _problem(p)
        for p in check_fragment(profile_fragment_schema(), spec.get("defaults"), "spec.defaults")
    ]
    stage_schema = pipeline_stage_spec_schema()
    for index, stage in enumerate(spec.get("stages") or []):
        if isinstance(stage, Mapping) and isinstance(stage.get("spec"), Mapping):
            where = f"spec.stages[{index}].spec"
            problems += [_problem(p) for p in check_fragment(stage_schema, stage["spec"], where)]
    return problems


def stage_job_manifest(
    pipeline: api.FineTunePipeline, stage: api.PipelineStage, outputs: Mapping[str, str]
) -> dict[str, Any]:
    """A FineTuneJob manifest of ``stage`` (named ``<pipeline>-<stage>``), for validation
    and local runs; the operator adds owner, labels and lineage to the same spec."""
    name = f"{pipeline.metadata.name or 'pipeline'}-{stage.name}"
    meta: dict[str, Any] = {"name": name}
    if pipeline.metadata.namespace:
        meta["namespace"] = pipeline.metadata.namespace
    return {
        "apiVersion": API_VERSION,
        "kind": "FineTuneJob",
        "metadata": meta,
        "spec": api.stage_job_spec(pipeline.spec, stage, outputs),
    }


def stage_problems(pipeline: api.FineTunePipeline) -> list[Problem]:
    """Each stage built as its job (with the planned outputs wired in) and validated."""
    from kubetune.api.validation import validate_manifest  # it dispatches to this module

    outputs = api.planned_outputs(pipeline.spec)
    problems = []
    for index, stage in enumerate(pipeline.spec.stages):
        report = validate_manifest(stage_job_manifest(pipeline, stage, outputs))
        for p in report.errors:
            path = p.path.removeprefix("spec")
            problems.append(
                Problem(
                    f"spec.stages[{index}].spec{path}" if p.path.startswith("spec") else p.path,
                    f"{p.message} (stage {stage.name!r} with the defaults and inputs applied)",
                )
            )
    return problems


def validate_pipeline(doc: Mapping[str, Any]) -> tuple[api.FineTunePipeline | None, list[Problem]]:
    """The parsed pipeline (None when invalid) and every problem found."""
    errors: list[Problem] = []
    if doc.get("apiVersion") != API_VERSION:
        errors.append(Problem("apiVersion", f"must be {API_VERSION}"))
    from kubetune.api.validation import _as_json, _loc_to_path, _pydantic_message

    raw = _as_json(doc)
    spec = raw.get("spec") if isinstance(raw.get("spec"), Mapping) else {}
    try:
        parsed = api.FineTunePipeline.model_validate_json(
            json.dumps(raw), strict=True, by_alias=True, by_name=False
        )
    except ValidationError as exc:
        errors += [
            Problem(_loc_to_path(err["loc"]), _pydantic_message(err))
            for err in exc.errors()
            if not _loc_to_path(err["loc"]).startswith("status")
        ]
        parsed = None
    reported = {p.path for p in errors}
    defaulted = cel.apply_defaults(
        pipeline_schema(), {k: v for k, v in raw.items() if k != "status"}
    )
    errors += [
        p
        for p in cel.check(pipeline_schema(), defaulted, None, strict=parsed is not None)
        if p.path not in reported
    ]
    errors += fragment_problems(spec or {})
    if parsed is None or errors:
        return None, errors
    errors += api.order_problems(parsed.spec)
    if errors:
        return None, errors
    errors += stage_problems(parsed)
    return (parsed if not errors else None), errors
