"""``kubetune dev seed``: a job's inputs on the real-pod nodes' PVC host directories, and its
claims printed for ``kubectl apply -f -``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kubetune.cli.dev import app

JOB = """
apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata: {name: seeded, namespace: team}
spec:
  method: lora
  model: {uri: pvc://models/my-own-model}
  dataset: {train: pvc://datasets/sample-chat/train.jsonl, format: chat}
  resources: {nodes: 2, gpusPerNode: 1}
  output: {uri: pvc://checkpoints/seeded}
"""


def test_seed_writes_known_inputs_and_prints_the_claims(tmp_path: Path) -> None:
    state = tmp_path / "cluster"
    (state / "nodeagent").mkdir(parents=True)
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    result = CliRunner().invoke(app, ["seed", "-f", str(job), "--state-dir", str(state)])
    assert result.exit_code == 0, result.output
    pvc = state / "nodeagent" / "pvc"
    train = pvc / "datasets" / "sample-chat" / "train.jsonl"
    assert train.is_file() and train.read_text().count("\n") > 10
    assert train.stat().st_mode & 0o444 == 0o444  # the pods' uid reads it
    # an unknown location is never invented (the trainer reports it missing, as on a cluster)
    assert not (pvc / "models" / "my-own-model").exists()
    assert (pvc / "checkpoints").stat().st_mode & 0o777 == 0o777  # outputs written as uid 1000
    listing = yaml.safe_load(result.stdout[result.stdout.index("apiVersion") :])
    items = listing["items"]
    claims = {i["metadata"]["name"]: i for i in items if i["kind"] == "PersistentVolumeClaim"}
    assert sorted(claims) == ["checkpoints", "datasets", "models"]
    assert {c["metadata"]["namespace"] for c in claims.values()} == {"team"}
    volumes = [i for i in items if i["kind"] == "PersistentVolume"]
    assert {v["spec"]["claimRef"]["name"] for v in volumes} == set(claims)
    assert {v["spec"]["hostPath"]["path"] for v in volumes} == {
        str(pvc / c) for c in ("checkpoints", "datasets", "models")
    }


def test_seed_needs_the_real_pod_nodes(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    result = CliRunner().invoke(app, ["seed", "-f", str(job), "--state-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "--real-nodes" in result.output


def test_seed_keeps_stdout_yaml_when_libraries_print(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building the model prints on stdout (DeepSpeed's accelerator warning): it must not end
    up in the YAML that ``kubectl apply -f -`` reads."""
    import kubetune.cli.run

    def noisy(resolved: object, pvc_root: Path) -> None:
        print("[WARNING] Setting accelerator to CPU.")

    monkeypatch.setattr(kubetune.cli.run, "_seed_fixtures", noisy)
    state = tmp_path / "cluster"
    (state / "nodeagent").mkdir(parents=True)
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    result = CliRunner().invoke(app, ["seed", "-f", str(job), "--state-dir", str(state)])
    assert result.exit_code == 0, result.output
    assert "WARNING" not in result.stdout
    assert yaml.safe_load(result.stdout)["kind"] == "List"
