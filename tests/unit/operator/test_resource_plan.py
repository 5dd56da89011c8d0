"""status.plan and FitsGPUMemory from the validation pod's estimate (kubetune plan)."""

from __future__ import annotations

from typing import Any

from kubetune.contract.plan import PlanSummary, encode_plan
from kubetune_operator.lifecycle import decide
from kubetune_operator.resource_plan import outcome

GIB = 2**30


def _message(fit: str, peak_gib: float, suggestions: list[str] | None = None) -> str:
    summary = PlanSummary(
        peak_memory_bytes=int(peak_gib * GIB),
        memory_bytes={"weights": int(15 * GIB), "activations": int(peak_gib * GIB - 15 * GIB)},
        gpu="H100-80GB",
        gpu_memory_bytes=81_559 * 2**20,
        fit=fit,  # type: ignore[arg-type]
        setup="lora r=16, bf16, DDP on 16 GPUs",
        suggestions=suggestions or [],
    )
    return "validation passed: model pvc://models/llama-8b\n" + encode_plan(summary)


def _validated_with(c: Any, message: str) -> None:
    c.step()
    (pod,) = c.validation_pods()
    c.finish(pod["metadata"]["name"], 0, message=message)
    c.apply(decide(c.observe(), c.settings))


def test_a_plan_that_does_not_fit_warns_but_the_gang_is_still_created(make_cluster: Any) -> None:
    c = make_cluster()
    advice = "enable hyperparameters.gradientCheckpointing: 61.0 GiB (fits)"
    _validated_with(c, _message("DoesNotFit", 97.5, [advice]))
    plan = c.status["plan"]
    assert plan["fit"] == "DoesNotFit" and plan["peakMemoryBytes"] == int(97.5 * GIB)
    assert plan["suggestions"] == [advice] and plan["gpu"] == "H100-80GB"
    cond = c.condition("FitsGPUMemory")
    assert cond["status"] == "False" and cond["reason"] == "ExceedsGPUMemory"
    assert "97.5 GiB" in cond["message"] and advice in cond["message"]
    warnings = [e for e in c.events if e[0] == "Warning" and e[1] == "ExceedsGPUMemory"]
    assert len(warnings) == 1 and "to fit: " + advice in warnings[0][2]
    # A warning, not a failure: validation passed and the GPU pods exist.
    assert c.condition("Validated")["status"] == "True"
    assert "kubetune-plan" not in c.condition("Validated")["message"], "the JSON line is hidden"
    assert c.workers(1) and c.status["phase"] == "Queued"
    c.apply(decide(c.observe(), c.settings))
    assert len([e for e in c.events if e[1] == "ExceedsGPUMemory"]) == 1, "posted once"


def test_a_plan_that_fits_sets_the_condition_true_without_a_warning(make_cluster: Any) -> None:
    c = make_cluster()
    _validated_with(c, _message("Fits", 41.2))
    cond = c.condition("FitsGPUMemory")
    assert cond["status"] == "True" and cond["reason"] == "FitsGPUMemory"
    assert "41.2 GiB" in cond["message"]
    assert not [e for e in c.events if e[0] == "Warning"]
    assert c.status["plan"]["memoryBytes"]["weights"] == 15 * GIB


def test_no_plan_line_leaves_status_plan_unset(make_cluster: Any) -> None:
    c = make_cluster()
    _validated_with(c, "validation passed: model pvc://models/llama-8b")
    assert "plan" not in c.status and c.condition("FitsGPUMemory") is None
    assert c.condition("Validated")["message"] == "validation passed: model pvc://models/llama-8b"


def test_outcome_by_verdict() -> None:
    assert outcome("validation passed") is None
    assert outcome("x\nkubetune-plan {not json") is None
    tight = outcome(_message("Tight", 70.0))
    assert tight is not None and tight.condition == "True" and tight.event is None
    assert tight.reason == "TightGPUMemory"
    unknown = outcome(_message("Unknown", 70.0))
    assert unknown is not None and unknown.condition == "Unknown"
    assert "nodeSelector" in unknown.message
