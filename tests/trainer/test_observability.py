"""Prometheus /metrics and /progress are served by rank 0 while training runs."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from kubetune.contract import ExitCode, ProgressDocument
from tests.trainer.helpers import PYTHON, REPO, manifest, trainer_env, write_config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def _sample(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_metrics_and_progress_during_a_run(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    port = _free_port()
    doc = manifest(
        "lora",
        tiny_model,
        data_dir / "chat.jsonl",
        "chat",
        out,
        hyper={"maxSteps": 400, "learningRate": 1e-3},
        peft={"lora": {"r": 2}},
    )
    env = trainer_env(
        write_config(doc, tmp_path / "job.json"), out, KUBETUNE_METRICS_PORT=str(port)
    )
    proc = subprocess.Popen(
        [PYTHON, "-m", "kubetune_trainer"], env=env, cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        progress: dict = {}
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                progress = json.loads(_get(base + "/progress"))
                if progress["state"] == "training" and progress["step"] >= 3:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert progress.get("step", 0) >= 3, f"no progress: {progress}"
        doc_progress = ProgressDocument.model_validate(progress)  # the contract model parses it
        assert doc_progress.total_steps == 400 and doc_progress.loss is not None
        assert doc_progress.tokens_per_second and doc_progress.tokens_per_second > 0
        assert doc_progress.eta_seconds is not None and doc_progress.eta_seconds > 0
        metrics = _get(base + "/metrics")
        assert _sample(metrics, "kubetune_trainer_steps_total") >= 3
        assert _sample(metrics, "kubetune_trainer_tokens_total") > 0
        assert _sample(metrics, "kubetune_trainer_tokens_per_second") > 0
        assert _sample(metrics, "kubetune_trainer_samples_per_second") > 0
        assert _sample(metrics, "kubetune_trainer_loss") > 0
        assert _sample(metrics, "kubetune_trainer_learning_rate") > 0
        assert _sample(metrics, "kubetune_trainer_grad_norm") > 0
        assert _sample(metrics, "kubetune_trainer_step_duration_seconds_count") >= 3
        assert _sample(metrics, 'kubetune_trainer_memory_bytes{kind="rss"}') > 1e6
        assert _sample(metrics, 'kubetune_trainer_skipped_rows_total{split="train"}') == 0
        assert _sample(metrics, "kubetune_trainer_total_steps") == 400
        assert 'kubetune_trainer_job_info{base_model="' in metrics
        assert _sample(metrics, "kubetune_trainer_data_wait_seconds_total") > 0
        # A CPU run has no accelerator peak and no MFU: absent, not 0.
        assert "kubetune_trainer_accelerator_memory_peak_bytes" not in metrics
        assert "kubetune_trainer_model_flops_utilization_ratio" not in metrics
        assert _get(base + "/healthz").strip() == "ok"
        # the file mirror: rewritten at most every WRITE_INTERVAL_SECONDS (1 s) while training
        deadline = time.monotonic() + 10
        file_doc = json.loads((out / "progress.json").read_text())
        while file_doc["step"] < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
            file_doc = json.loads((out / "progress.json").read_text())
        assert file_doc["totalSteps"] == 400 and file_doc["step"] >= 3
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == ExitCode.RETRYABLE
