"""The dev Prometheus' generated configuration, local-run registration and pinned version
(no binary needed; tests/observability runs the real one)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from kubetune.devcluster import prometheus as prom
from kubetune.devcluster.versions import (
    COMPONENT_BINARIES,
    DATA_DIR,
    Binaries,
    DevClusterError,
    Versions,
)
from kubetune_operator import naming
from kubetune_operator.render import pods as render_pods


def _relabel(rules: list[dict], labels: dict[str, str]) -> dict[str, str] | None:
    """Apply Prometheus relabeling (the keep/drop/replace subset we generate) to labels."""
    out = dict(labels)
    for rule in rules:
        action = rule.get("action", "replace")
        value = rule.get("separator", ";").join(
            out.get(s, "") for s in rule.get("source_labels", [])
        )
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if action == "keep" and not match:
            return None
        if action == "drop" and match:
            return None
        if action == "replace" and match:
            repl = rule.get("replacement", "$1")
            for n, group in enumerate(match.groups(), start=1):
                repl = repl.replace(f"${n}", group or "")
            out[rule["target_label"]] = repl
    return out


def _pod(rank: str, role: str = "worker", port: str = "metrics", **extra: str) -> dict[str, str]:
    labels = {
        "__address__": "10.0.0.1:9400",
        "__meta_kubernetes_namespace": "team-a",
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_labelpresent_kubetune_io_job_name": "true",
        "__meta_kubernetes_pod_label_kubetune_io_job_name": "ft",
        "__meta_kubernetes_pod_label_kubetune_io_role": role,
        "__meta_kubernetes_pod_label_kubetune_io_rank": rank,
        "__meta_kubernetes_pod_container_port_name": port,
    }
    labels.update(extra)
    return labels


def _settings(tmp_path: Path, **kw: object) -> prom.ScrapeSettings:
    return prom.ScrapeSettings(file_sd_dir=tmp_path / "sd", **kw)  # type: ignore[arg-type]


def test_config_has_the_contract_job_names_and_interval(tmp_path: Path) -> None:
    cfg = prom.render_config(
        _settings(
            tmp_path,
            operator_targets=["127.0.0.1:8081"],
            kubeconfig=tmp_path / "kc",
            scrape_interval="1s",
            rule_files=[tmp_path / "r.yaml"],
        )
    )
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {
        "kubetune-operator",
        "kubetune-trainer",
        "kubetune-trainer-local",
        "kubetune-serve",  # model servers of the canary demo and tests (kubetune serve)
    }
    assert jobs["kubetune-serve"]["file_sd_configs"][0]["files"] == [
        str(tmp_path / "sd" / "serve" / "*.json")
    ]
    assert jobs["kubetune-operator"]["static_configs"] == [{"targets": ["127.0.0.1:8081"]}]
    sd = jobs["kubetune-trainer"]["kubernetes_sd_configs"]
    assert sd == [{"role": "pod", "kubeconfig_file": str(tmp_path / "kc")}]
    assert jobs["kubetune-trainer-local"]["file_sd_configs"][0]["files"] == [
        str(tmp_path / "sd" / "*.json")
    ]
    assert cfg["global"]["scrape_interval"] == "1s" and cfg["global"]["evaluation_interval"] == "1s"
    assert cfg["rule_files"] == [str(tmp_path / "r.yaml")]
    # no kubeconfig: no pod discovery
    plain = prom.render_config(_settings(tmp_path))
    assert "kubetune-trainer" not in {j["job_name"] for j in plain["scrape_configs"]}
    assert plain["global"]["scrape_interval"] == "15s"
    with pytest.raises(DevClusterError, match="duration"):
        _settings(tmp_path, scrape_interval="1 second")


def test_pod_relabeling_keeps_rank_zero_and_names_the_job(tmp_path: Path) -> None:
    cfg = prom.render_config(_settings(tmp_path, kubeconfig=tmp_path / "kc"))
    rules = next(j for j in cfg["scrape_configs"] if j["job_name"] == "kubetune-trainer")[
        "relabel_configs"
    ]
    kept = _relabel(rules, _pod("0"))
    assert kept is not None
    assert kept["namespace"] == "team-a" and kept["finetunejob"] == "ft"
    assert _relabel(rules, _pod("1")) is None  # only rank 0 serves /metrics
    assert _relabel(rules, _pod("0", role="validation")) is None
    assert _relabel(rules, _pod("0", port="rdzv")) is None
    assert _relabel(rules, _pod("0", __meta_kubernetes_pod_phase="Succeeded")) is None
    other = _pod("0")
    other["__meta_kubernetes_pod_labelpresent_kubetune_io_job_name"] = ""
    assert _relabel(rules, other) is None
    # a long name: the label is shortened, the annotation holds the full name
    long = _pod("0", __meta_kubernetes_pod_annotation_kubetune_io_job_name="a-very-long-name")
    assert _relabel(rules, long)["finetunejob"] == "a-very-long-name"  # type: ignore[index]
    local = next(j for j in cfg["scrape_configs"] if j["job_name"] == "kubetune-trainer-local")
    assert _relabel(local["relabel_configs"], {"job": "kubetune-trainer-local"}) == {
        "job": "kubetune-trainer"
    }


def test_pod_labels_match_what_the_operator_renders() -> None:
    assert prom.POD_JOB_LABEL == naming.LABEL_JOB
    assert prom.POD_JOB_ANNOTATION == naming.ANNOTATION_JOB
    assert prom.POD_ROLE_LABEL == naming.LABEL_ROLE and naming.ROLE_WORKER == "worker"
    assert prom.POD_RANK_LABEL == naming.LABEL_RANK
    source = Path(render_pods.__file__).read_text()
    assert f'"name": "{prom.METRICS_PORT_NAME}", "containerPort": settings.progress_port' in source


def test_local_run_target_is_written_and_removed(tmp_path: Path) -> None:
    sd = tmp_path / "sd"
    with prom.local_run_target(sd, "my job", "127.0.0.1:1234") as path:
        assert path.parent == sd and path.suffix == ".json" and " " not in path.name
        doc = json.loads(path.read_text())
        assert doc == [
            {
                "targets": ["127.0.0.1:1234"],
                "labels": {"namespace": "local", "finetunejob": "my job"},
            }
        ]
        assert [p.name for p in sd.iterdir()] == [path.name]  # no temporary file left
    assert not list(sd.iterdir())


def test_prometheus_is_a_pinned_component(tmp_path: Path) -> None:
    versions = Versions.load()
    assert versions.prometheus == "v0.316.0" and versions.prometheus_release == "3.16.0"
    assert COMPONENT_BINARIES["prometheus"] == ("prometheus", "promtool")
    binaries = Binaries(versions, tmp_path)
    assert binaries.path("promtool") == tmp_path / "prometheus-v0.316.0" / "promtool"
    assert "prometheus" in binaries.missing()
    script = (DATA_DIR / "build.sh").read_text()
    assert (
        "build_prometheus()" in script and "COMPONENTS=(etcd kubernetes helm prometheus)" in script
    )
    out = subprocess.run(
        ["bash", str(DATA_DIR / "build.sh"), "nonsense"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "unknown argument" in out.stderr


def test_cli_has_the_prometheus_commands(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kubetune.cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["dev", "prometheus", "status", "--dir", str(tmp_path)])
    assert result.exit_code == 1  # nothing running there
    result = runner.invoke(app, ["dev", "prometheus", "down", "--dir", str(tmp_path)])
    assert result.exit_code == 0
