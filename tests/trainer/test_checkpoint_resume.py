"""Atomic checkpoints, exact resume, SIGTERM handling and numerical health."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune.api.training import HealthSpec
from kubetune.contract import ExitCode
from kubetune_trainer.checkpoint import atomic
from kubetune_trainer.checkpoint.state import BASE_EVAL_EXAMPLES, TrainerState
from kubetune_trainer.errors import NumericalDivergenceError, PreemptedError
from kubetune_trainer.health import HealthMonitor
from tests.trainer.helpers import (
    PYTHON,
    REPO,
    manifest,
    read_json,
    run_trainer,
    train_in_process,
    trainer_env,
    write_config,
)


def test_atomic_commit_prune_and_staging_cleanup(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        staging = atomic.prepare_staging(root, step)
        (staging / "weights").write_text(str(step))
        assert atomic.latest_complete(root) == (
            root / atomic.checkpoint_name(step - 1) if step > 1 else None
        )
        atomic.commit(root, staging, step, {})
        atomic.prune(root, keep_last=2)
    assert [s for s, _ in atomic.complete_checkpoints(root)] == [2, 3]
    assert (root / "latest").read_text().strip() == atomic.checkpoint_name(3)
    # a crash mid-save: staging dir and an unmarked step dir are never "latest" and get cleaned
    half = atomic.prepare_staging(root, 4)
    (half / "weights").write_text("partial")
    (root / atomic.checkpoint_name(5)).mkdir()
    assert atomic.latest_complete(root) == root / atomic.checkpoint_name(3)
    atomic.clean_staging(root)
    assert sorted(p.name for p in root.iterdir()) == [
        "latest",
        atomic.checkpoint_name(2),
        atomic.checkpoint_name(3),
    ]
    # re-saving an existing step replaces it atomically
    again = atomic.prepare_staging(root, 3)
    (again / "weights").write_text("new")
    atomic.commit(root, again, 3, {})
    assert (root / atomic.checkpoint_name(3) / "weights").read_text() == "new"


def test_state_keeps_base_eval_examples_beside_the_state_file(tmp_path: Path) -> None:
    """Per-example base evaluation sums round-trip in their own compact file; a missing or
    malformed file (older checkpoint, tampering) loads as None: point-estimate gates."""
    rows = [[12.5, 4.0], [3.25, 1.0]]
    TrainerState(step=3, base_eval={"loss": 3.15}, base_eval_examples=rows).save(tmp_path)
    assert "base_eval_examples" not in read_json(tmp_path / "trainer_state.json")
    loaded = TrainerState.load(tmp_path)
    assert loaded.step == 3 and loaded.base_eval_examples == rows
    for bad in ("{", '[["x", 1]]', "[[1.0, 2.0, 3.0]]", '{"a": 1}', "[[NaN, 1.0]]"):
        (tmp_path / BASE_EVAL_EXAMPLES).write_text(bad)
        assert TrainerState.load(tmp_path).base_eval_examples is None, bad
    (tmp_path / BASE_EVAL_EXAMPLES).unlink()
    assert TrainerState.load(tmp_path).base_eval_examples is None


def _resume_doc(tiny_model: Path, data_dir: Path, out: Path) -> dict:
    return manifest(
        "lora",
        tiny_model,
        data_dir / "chat.jsonl",
        "chat",
        out,
        hyper={
            "maxSteps": 8,
            "globalBatchSize": 8,
            "microBatchSize": 2,
            "learningRate": 5e-3,
            "warmupRatio": 0.2,
        },
        peft={"lora": {"r": 4, "alpha": 8, "dropout": 0.1}},  # dropout: the RNG state matters
        checkpoint={"intervalSteps": 2, "keepLast": 2},
    )


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter_model.safetensors"))


def test_interrupted_and_resumed_run_matches_uninterrupted(
    tiny_model: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = train_in_process(
        _resume_doc(tiny_model, data_dir, tmp_path / "a" / "out"), tmp_path / "a"
    )
    assert straight.resumed_from is None and straight.steps == 8

    out_b = tmp_path / "b" / "out"
    monkeypatch.setenv(
        "KUBETUNE_STOP_AFTER_STEP", "5"
    )  # crosses the epoch boundary (6 steps/epoch)
    with pytest.raises(PreemptedError):
        train_in_process(_resume_doc(tiny_model, data_dir, out_b), tmp_path / "b")
    assert atomic.latest_complete(
        out_b / "checkpoints"
    ) == out_b / "checkpoints" / atomic.checkpoint_name(5)
    assert read_json(out_b / "progress.json")["state"] == "failed"
    monkeypatch.delenv("KUBETUNE_STOP_AFTER_STEP")
    loads: list[tuple[str, object]] = []  # every file the resume unpickles, and how
    real_load = torch.load

    def recording_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        loads.append((str(f), kwargs.get("weights_only")))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    resumed = train_in_process(_resume_doc(tiny_model, data_dir, out_b), tmp_path / "b")
    monkeypatch.setattr(torch, "load", real_load)
    assert resumed.resumed_from == 5 and resumed.steps == 8
    # the RNG state came back through the safe loader (a planted pickle cannot run), and
    # so did everything else the resume read; the equal weights below prove it is exact
    assert any(path.endswith("rng-rank0.pt") for path, _ in loads), loads
    assert all(weights_only is True for _, weights_only in loads), loads

    a, b = _adapter(tmp_path / "a" / "out"), _adapter(out_b)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    losses_a = [
        r["loss"]
        for r in map(
            json.loads, (tmp_path / "a" / "out" / "train_log.jsonl").read_text().splitlines()
        )
    ]
    losses_b = [
        r["loss"] for r in map(json.loads, (out_b / "train_log.jsonl").read_text().splitlines())
    ]
    assert losses_b == pytest.approx(losses_a, abs=1e-6)  # steps 1-5, then 6-8 after the restart


def _wait_for_step(
    progress: Path, proc: subprocess.Popen[str], step: int, timeout: float = 120
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"trainer exited early with {proc.returncode}: "
                + (proc.stderr.read()[-3000:] if proc.stderr else "")
            )
        try:
            doc = json.loads(progress.read_text())
            if doc.get("step", 0) >= step:
                return doc
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError("the trainer made no progress")


def test_sigterm_checkpoints_and_exits_retryable(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    doc = manifest(
        "lora",
        tiny_model,
        data_dir / "chat.jsonl",
        "chat",
        out,
        hyper={"maxSteps": 500, "learningRate": 1e-3},
        peft={"lora": {"r": 2}},
    )
    env = trainer_env(write_config(doc, tmp_path / "job.json"), out)
    proc = subprocess.Popen(
        [PYTHON, "-m", "kubetune_trainer"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_step(out / "progress.json", proc, 2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == ExitCode.RETRYABLE, stderr[-3000:]
    latest = atomic.latest_complete(out / "checkpoints")
    assert latest is not None and (latest / atomic.COMPLETE).exists()
    stopped_at = read_json(latest / "trainer_state.json")["step"]
    assert 2 <= stopped_at < 500
    assert read_json(out / "progress.json")["lastCheckpointStep"] == stopped_at
    message = Path(env["KUBETUNE_TERMINATION_LOG"]).read_text()
    assert "SIGTERM" in message and "RETRYABLE" in message


def test_sigterm_through_launcher_with_two_ranks(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    """The launcher forwards SIGTERM to torchrun; both ranks agree, checkpoint, exit 75."""
    out = tmp_path / "out"
    doc = manifest(
        "lora",
        tiny_model,
        data_dir / "chat.jsonl",
        "chat",
        out,
        hyper={"maxSteps": 500, "learningRate": 1e-3},
        peft={"lora": {"r": 2}},
    )
    env = trainer_env(write_config(doc, tmp_path / "job.json", nproc=2), out)
    proc = subprocess.Popen(
        [PYTHON, "-m", "kubetune_trainer.launch", "--nproc-per-node", "2"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_step(out / "progress.json", proc, 2, timeout=180)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == ExitCode.RETRYABLE, stderr[-3000:]
    latest = atomic.latest_complete(out / "checkpoints")
    assert latest is not None
    assert {p.name for p in latest.glob("rng-rank*.pt")} == {"rng-rank0.pt", "rng-rank1.pt"}


def test_absurd_learning_rate_stops_with_numerical_divergence(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    doc = manifest(
        "full",
        tiny_model,
        data_dir / "chat.jsonl",
        "chat",
        out,
        hyper={"maxSteps": 30, "learningRate": 1.0, "maxGradNorm": 1000.0, "scheduler": "constant"},
        health={"gradNormAbortThreshold": 100.0},
    )
    proc = run_trainer(write_config(doc, tmp_path / "job.json"), out)
    assert proc.returncode == ExitCode.NUMERICAL_DIVERGENCE, proc.stderr[-3000:]
    assert "gradient norm" in proc.stderr or "non-finite" in proc.stderr
    assert read_json(out / "progress.json")["state"] == "failed"


def test_health_monitor_nan_tolerance_and_threshold() -> None:
    monitor = HealthMonitor(HealthSpec(grad_norm_abort_threshold=10.0, nan_tolerance_steps=1))
    assert monitor.check(1, 2.0, 1.0) == "ok"
    assert monitor.check(2, math.nan, None) == "skip"  # one tolerated
    assert monitor.check(3, 1.5, 2.0) == "ok"  # streak reset
    assert monitor.check(4, 1.5, math.inf) == "skip"
    with pytest.raises(NumericalDivergenceError, match="non-finite loss"):
        monitor.check(5, math.nan, None)
    with pytest.raises(NumericalDivergenceError, match="exceeds"):
        HealthMonitor(HealthSpec(grad_norm_abort_threshold=10.0)).check(1, 1.0, 11.0)
    with pytest.raises(NumericalDivergenceError):  # DeepSpeed cannot skip: no tolerance
        HealthMonitor(HealthSpec(nan_tolerance_steps=3)).check(1, math.nan, None, can_skip=False)


def test_injected_nan_loss_stops_the_run(
    tiny_model: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune_trainer.methods.base import Method

    original = Method.loss
    calls = {"n": 0}

    def poisoned(self, forward, model, batch):  # type: ignore[no-untyped-def]
        out = original(self, forward, model, batch)
        calls["n"] += 1
        if calls["n"] > 4 and model.training:
            out.loss_sum = out.loss_sum * float("nan")
        return out

    monkeypatch.setattr(Method, "loss", poisoned)
    out = tmp_path / "out"
    doc = manifest("full", tiny_model, data_dir / "chat.jsonl", "chat", out, hyper={"maxSteps": 6})
    with pytest.raises(NumericalDivergenceError, match="non-finite loss nan at step 3"):
        train_in_process(doc, tmp_path)


def test_launcher_maps_worker_exit_codes(tiny_model: Path, tmp_path: Path) -> None:
    """torchrun alone exits 1 for any worker failure; the launcher returns the contract code.

    Called with a verbatim torchrun command line, as the operator's pod command does.
    """
    from kubetune_trainer.launch import collect_exit_code

    out = tmp_path / "out"
    doc = manifest("full", tiny_model, tmp_path / "missing.jsonl", "text", out)
    env = trainer_env(write_config(doc, tmp_path / "job.json"), out)
    args = ["--standalone", "--nproc-per-node=1", "-m", "kubetune_trainer", "--validate-only"]
    torchrun = subprocess.run(
        [PYTHON, "-m", "torch.distributed.run", *args], env=env, cwd=REPO, capture_output=True
    )
    assert torchrun.returncode == 1
    launched = subprocess.run(
        [PYTHON, "-m", "kubetune_trainer.launch", *args], env=env, cwd=REPO, capture_output=True
    )
    assert launched.returncode == ExitCode.INVALID_DATA

    records = tmp_path / "exit"
    records.mkdir()
    (records / "rank-0.json").write_text(json.dumps({"code": 75, "message": "preempted"}))
    (records / "rank-1.json").write_text(json.dumps({"code": 79, "message": "nan"}))
    (records / "rank-2.json").write_text(json.dumps({"code": 1, "message": "crash"}))
    assert collect_exit_code(records, 1) == (79, "nan")  # permanent beats retryable
    (records / "rank-1.json").unlink()
    assert collect_exit_code(records, 1) == (75, "preempted")  # retryable beats a crash
    assert collect_exit_code(records, 0) == (0, None)
