"""The operator-trainer contract, end to end on one machine: what the operator renders for
the validation pod (resolved config, environment, command) is what the real trainer's
``--validate-only`` accepts, and the trainer's exit codes land on the operator's verdicts.

Needs torch and the trainer (marker ``trainer``); skipped without them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import FineTuneJob
from kubetune.api.resolve import resolve
from kubetune.contract.env import CONFIG_ENV, PVC_ROOT_ENV
from kubetune_operator.failures import classify_pod
from kubetune_operator.observed import ContainerExit, PodView
from kubetune_operator.render import render_config_map, render_validation_pod
from kubetune_operator.settings import OperatorSettings

pytestmark = pytest.mark.trainer
fixtures = pytest.importorskip("kubetune_trainer.assets.fixtures")
pytest.importorskip("torch")


def run_validation_pod(
    job: FineTuneJob, settings: OperatorSettings, tmp: Path, pvc_root: Path
) -> tuple[int, str]:
    """Run the validation pod's container locally: its command and env, with the config
    file and PVC root remapped to ``tmp``."""
    config = render_config_map(job, resolve(job, attempt=1))
    config_file = tmp / "job.json"
    config_file.write_text(config["data"]["job.json"])
    pod = render_validation_pod(job, 1, settings)
    container = pod["spec"]["containers"][0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBETUNE_")}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
    env[CONFIG_ENV] = str(config_file)
    env[PVC_ROOT_ENV] = str(pvc_root)
    env["KUBETUNE_TERMINATION_LOG"] = str(tmp / "termination-log")
    command = [sys.executable if c == "python" else c for c in container["command"]]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    log = tmp / "termination-log"
    return proc.returncode, log.read_text() if log.exists() else proc.stderr[-2000:]


@pytest.fixture
def tiny_job(manifest: Callable[..., dict[str, Any]]) -> Callable[..., FineTuneJob]:
    def make(train: str, output: str = "pvc://checkpoints/tune") -> FineTuneJob:
        doc = manifest(
            model={"uri": "pvc://models/kubetune-tiny-chat"},
            dataset={"train": train, "format": "chat", "maxSeqLength": 128},
            hyperparameters={"globalBatchSize": 4, "microBatchSize": 2, "epochs": 1},
            resources={"nodes": 1, "gpusPerNode": 2},
            output={"uri": output},
        )
        return FineTuneJob.model_validate(doc)

    return make


@pytest.mark.parametrize("output", ["pvc://checkpoints/tune", "s3://results/tune"])
def test_validation_pod_runs_the_real_trainer(
    tiny_job: Callable[..., FineTuneJob], settings: OperatorSettings, tmp_path: Path, output: str
) -> None:
    pvc_root = tmp_path / "pvc"
    job = tiny_job("pvc://datasets/sample-chat/train.jsonl", output)
    for uri in (job.spec.model.uri, job.spec.dataset.train):
        fixtures.seed_location(uri, pvc_root)
    code, message = run_validation_pod(job, settings, tmp_path, pvc_root)
    assert code == 0, message
    assert message.startswith("validation passed"), message


def test_bad_dataset_exit_code_becomes_invalid_data(
    tiny_job: Callable[..., FineTuneJob], settings: OperatorSettings, tmp_path: Path
) -> None:
    pvc_root = tmp_path / "pvc"
    job = tiny_job("pvc://datasets/broken/train.jsonl")
    fixtures.seed_location(job.spec.model.uri, pvc_root)
    bad = pvc_root / "datasets" / "broken" / "train.jsonl"
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps({"messages": "not a list"}) + "\n{oops\n")
    code, message = run_validation_pod(job, settings, tmp_path, pvc_root)
    assert code == 65, message
    pod = PodView(
        name="tune-validate-1",
        uid="u",
        job="tune",
        role="validation",
        owner_uid="uid-tune",
        phase="Failed",
        exit=ContainerExit(code, "Error", message),
    )
    failure = classify_pod(pod, None, __import__("datetime").datetime.now(), 60)
    assert failure is not None and not failure.retryable
    assert failure.reason == "InvalidData" and message.strip()[:40] in failure.message


def test_torchrun_accepts_the_rendered_command(manifest: Callable[..., dict[str, Any]]) -> None:
    from torch.distributed.run import config_from_args, parse_args

    from kubetune_operator.render import torchrun_command

    job = FineTuneJob.model_validate(
        manifest(resources={"nodes": 4}, hyperparameters={"globalBatchSize": 64})
    )
    command = torchrun_command(job, 3, 2, OperatorSettings(leader_election=False))
    assert command[:3] == ["python", "-m", "kubetune_trainer.launch"]
    config, _entrypoint, args = config_from_args(parse_args(command[3:]))
    assert (config.min_nodes, config.max_nodes, config.nproc_per_node) == (4, 4, 8)
    assert config.rdzv_backend == "static" and config.max_restarts == 0
    assert config.rdzv_endpoint == "tune-0.tune.team.svc:29400"
    assert config.run_id == "uid-tune-3"
    assert config.rdzv_configs == {"timeout": "900", "rank": 2}
    assert args[-2:] == ["-m", "kubetune_trainer"]
