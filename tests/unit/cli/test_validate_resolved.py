"""``kubetune validate --resolved``: the job as the operator will run it, with its sources."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from kubetune.cli.main import app

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "team-defaults"
runner = CliRunner()


def resolved(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["validate", "--resolved", *args])
    return result.exit_code, result.output


def test_example_job_is_15_lines_and_resolves_with_its_team_defaults() -> None:
    job = (EXAMPLE / "job.yaml").read_text().splitlines()
    assert len([line for line in job if line.strip() and not line.startswith("#")]) <= 15
    code, output = resolved(
        "-f", str(EXAMPLE / "job.yaml"), "--profiles", str(EXAMPLE / "profiles.yaml")
    )
    assert code == 0, output
    lines = output.splitlines()
    assert "    gpusPerNode: 8  # ClusterFineTuneProfile/h100-pool" in lines
    assert "    queueName: h100  # ClusterFineTuneProfile/h100-pool" in lines
    assert "    learningRate: 0.0002  # ClusterFineTuneProfile/h100-pool (methods.lora)" in lines
    assert "    intervalSteps: 200  # FineTuneProfile/default" in lines
    assert "    uri: pvc://checkpoints/support-bot-lora  # FineTuneJob" in lines
    assert "    nodes: 1  # built-in default" in lines
    # The output is YAML: the resolved spec, comments aside.
    doc = yaml.safe_load(output.split("\n# derived")[0])
    assert doc["spec"]["resources"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert doc["spec"]["image"] == "registry.example.com/kubetune/trainer:1.4.0"


def test_job_spec_wins_and_order_is_listed(tmp_path: Path) -> None:
    job = yaml.safe_load((EXAMPLE / "job.yaml").read_text())
    job["spec"]["resources"] = {"gpusPerNode": 4}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    code, output = resolved(str(path), "--profiles", str(EXAMPLE / "profiles.yaml"))
    assert code == 0, output
    assert "    gpusPerNode: 4  # FineTuneJob" in output.splitlines()
    header = output.split("spec:")[0]
    assert (
        header.index("built-in defaults")
        < header.index("h100-pool")
        < header.index("FineTuneProfile/default")
        < header.index("FineTuneJob (its own spec)")
    )


def test_other_namespace_gets_no_team_profile(tmp_path: Path) -> None:
    job = yaml.safe_load((EXAMPLE / "job.yaml").read_text())
    job["metadata"]["namespace"] = "other"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    code, output = resolved(str(path), "--profiles", str(EXAMPLE / "profiles.yaml"))
    assert code == 0, output
    assert "h100-pool" not in output
    assert "    gpusPerNode: 1  # built-in default" in output.splitlines()


def test_missing_named_profile_fails(tmp_path: Path) -> None:
    job = yaml.safe_load((EXAMPLE / "job.yaml").read_text())
    job["spec"]["profile"] = "nope"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    code, output = resolved(str(path), "--profiles", str(EXAMPLE / "profiles.yaml"))
    assert code == 1
    assert "no FineTuneProfile ml-team/nope and no ClusterFineTuneProfile nope" in " ".join(
        output.split()
    )


def test_profile_with_a_bad_enum_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubetune.io/v1alpha1",
                "kind": "FineTuneProfile",
                "metadata": {"name": "default", "namespace": "ml-team"},
                "spec": {"defaults": {"distributed": {"strategy": "horovod"}}},
            }
        )
    )
    code, output = resolved("-f", str(EXAMPLE / "job.yaml"), "--profiles", str(bad))
    assert code == 2
    assert "spec.defaults.distributed.strategy" in " ".join(output.split())
