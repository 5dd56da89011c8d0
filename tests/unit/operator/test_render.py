"""Rendering of the ConfigMap, Service, validation pod and training pods."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from kubetune.api import FineTuneJob
from kubetune.api.resolve import ResolvedJob, resolve
from kubetune_operator import naming
from kubetune_operator.render import (
    render_config_map,
    render_service,
    render_validation_pod,
    render_worker_pod,
    torchrun_command,
)
from kubetune_operator.settings import OperatorSettings

# Volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Every check of the ``restricted`` Pod Security Standard (v1.36 policy), by name."""
    spec = pod["spec"]
    psc = spec.get("securityContext") or {}
    out: list[str] = []
    # baseline
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(f"host namespaces: {key}")
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    for c in containers:
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{c['name']}: privileged")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                out.append(f"{c['name']}: hostPort")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{c['name']}: procMount")
        # restricted: privilege escalation
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{c['name']}: allowPrivilegeEscalation != false")
        # restricted: capabilities drop ALL, add only NET_BIND_SERVICE
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{c['name']}: capabilities not dropping ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{c['name']}: capabilities added")
        # restricted: running as non-root
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            out.append(f"{c['name']}: runAsNonRoot != true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            out.append(f"{c['name']}: runAsUser 0")
        # restricted: seccomp
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{c['name']}: seccompProfile {seccomp}")
        se = sc.get("seLinuxOptions") or {}
        if se.get("user") or se.get("role"):
            out.append(f"{c['name']}: seLinuxOptions")
    if psc.get("runAsUser") == 0:
        out.append("pod runAsUser 0")
    for sysctl in psc.get("sysctls") or []:
        out.append(f"sysctl {sysctl['name']}")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"volume {volume['name']}: {kinds}")
    return out


def load(manifest: Callable[..., dict[str, Any]], **spec: Any) -> FineTuneJob:
    return FineTuneJob.model_validate(manifest(**spec))


@pytest.fixture
def job(manifest: Callable[..., dict[str, Any]]) -> FineTuneJob:
    return load(
        manifest,
        resources={
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "priorityClassName": "training",
            "sharedMemory": "32Gi",
        },
        env=[
            {"name": "WANDB_MODE", "value": "offline"},
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
        ],
    )


def container(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["spec"]["containers"][0]


def env(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container(pod)["env"]}


def test_worker_pod_passes_restricted_pss(job: FineTuneJob, settings: OperatorSettings) -> None:
    pod = render_worker_pod(job, 1, 0, settings, config_hash="h")
    assert restricted_violations(pod) == []
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["securityContext"]["runAsUser"] != 0


def test_validation_pod_passes_restricted_pss(job: FineTuneJob, settings: OperatorSettings) -> None:
    assert restricted_violations(render_validation_pod(job, 1, settings)) == []


def test_checker_catches_violations(job: FineTuneJob, settings: OperatorSettings) -> None:
    pod = render_worker_pod(job, 1, 0, settings)
    pod["spec"]["hostNetwork"] = True
    container(pod)["securityContext"]["allowPrivilegeEscalation"] = True
    pod["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}})
    assert len(restricted_violations(pod)) == 3


def test_torchrun_command(job: FineTuneJob, settings: OperatorSettings) -> None:
    cmd = torchrun_command(job, 3, 1, settings)
    assert cmd[:3] == ["python", "-m", "kubetune_trainer.launch"]
    assert cmd[-2:] == ["-m", "kubetune_trainer"]
    assert "--nnodes=2" in cmd and "--nproc-per-node=8" in cmd and "--node-rank=1" in cmd
    assert "--rdzv-backend=static" in cmd
    assert "--master-addr=tune-0.tune.team.svc" in cmd
    assert "--master-port=29400" in cmd
    assert "--rdzv-id=uid-tune-3" in cmd
    assert "--max-restarts=0" in cmd, "whole-gang restarts are the operator's job"
    assert "--rdzv-conf=timeout=900" in cmd


def test_worker_pod_identity_and_gate(job: FineTuneJob, settings: OperatorSettings) -> None:
    pod = render_worker_pod(job, 2, 1, settings, config_hash="abc")
    meta = pod["metadata"]
    assert meta["name"] == "tune-a2-1" and meta["namespace"] == "team"
    labels = meta["labels"]
    assert labels[naming.LABEL_JOB] == "tune"
    assert labels[naming.LABEL_ATTEMPT] == "2"
    assert labels[naming.LABEL_RANK] == "1"
    assert labels["app.kubernetes.io/managed-by"] == "kubetune-operator"
    assert labels["app.kubernetes.io/instance"] == "tune"
    assert meta["annotations"][naming.ANNOTATION_CONFIG_HASH] == "abc"
    assert pod["spec"]["schedulingGates"] == [{"name": "kubetune.io/gang"}]
    assert pod["spec"]["hostname"] == "tune-1" and pod["spec"]["subdomain"] == "tune"
    assert pod["spec"]["restartPolicy"] == "Never"
    (ref,) = meta["ownerReferences"]
    assert ref == {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "name": "tune",
        "uid": "uid-tune",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_worker_resources_and_placement(job: FineTuneJob, settings: OperatorSettings) -> None:
    pod = render_worker_pod(job, 1, 0, settings)
    res = container(pod)["resources"]
    assert (
        res["requests"]
        == res["limits"]
        == {
            "cpu": "16",
            "memory": "128Gi",
            "nvidia.com/gpu": "8",
        }
    )
    spec = pod["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert spec["priorityClassName"] == "training"
    shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
    assert spec["terminationGracePeriodSeconds"] == 120
    assert container(pod)["terminationMessagePolicy"] == "FallbackToLogsOnError"
    ports = {p["name"]: p["containerPort"] for p in container(pod)["ports"]}
    assert ports == {"metrics": 9400, "rdzv": 29400}


def test_custom_gpu_resource_name(manifest: Callable[..., Any], settings: OperatorSettings) -> None:
    job = load(
        manifest,
        resources={"gpuResourceName": "amd.com/gpu", "gpusPerNode": 4},
        hyperparameters={"globalBatchSize": 16},
    )
    res = container(render_worker_pod(job, 1, 0, settings))["resources"]
    assert res["limits"]["amd.com/gpu"] == "4" and "nvidia.com/gpu" not in res["limits"]


def test_contract_env(job: FineTuneJob, settings: OperatorSettings) -> None:
    e = env(render_worker_pod(job, 4, 0, settings))
    assert e["KUBETUNE_CONFIG"]["value"] == "/etc/kubetune/job.json"
    assert e["KUBETUNE_OUTPUT_DIR"]["value"] == "/mnt/pvc/ckpt/tune"
    assert e["KUBETUNE_ATTEMPT"]["value"] == "4"
    assert e["KUBETUNE_METRICS_PORT"]["value"] == "9400"
    assert e["KUBETUNE_PVC_ROOT"]["value"] == "/mnt/pvc"
    assert e["WANDB_MODE"]["value"] == "offline"
    assert e["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "hf",
        "key": "token",
        "optional": False,
    }
    names = [x["name"] for x in container(render_worker_pod(job, 1, 0, settings))["env"]]
    assert names.index("WANDB_MODE") < names.index("KUBETUNE_CONFIG"), "contract vars win"


def test_config_mount_and_pvc_volumes(job: FineTuneJob, settings: OperatorSettings) -> None:
    pod = render_worker_pod(job, 1, 0, settings)
    mounts = {m["mountPath"]: m for m in container(pod)["volumeMounts"]}
    assert mounts["/etc/kubetune"]["readOnly"] is True
    assert mounts["/mnt/pvc/models"]["readOnly"] is True
    assert mounts["/mnt/pvc/data"]["readOnly"] is True
    assert mounts["/mnt/pvc/ckpt"]["readOnly"] is False
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
        for v in pod["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"models": True, "data": True, "ckpt": False}
    config = next(v for v in pod["spec"]["volumes"] if v["name"] == "config")
    assert config["configMap"]["name"] == "tune-config"


def test_shared_claim_for_data_and_output_is_writable_once(
    manifest: Callable[..., Any], settings: OperatorSettings
) -> None:
    job = load(
        manifest,
        dataset={"train": "pvc://work/data.jsonl", "format": "chat"},
        output={"uri": "pvc://work/out"},
    )
    pod = render_worker_pod(job, 1, 0, settings)
    claims = [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert [c["persistentVolumeClaim"]["claimName"] for c in claims].count("work") == 1
    work = next(c for c in claims if c["persistentVolumeClaim"]["claimName"] == "work")
    assert work["persistentVolumeClaim"]["readOnly"] is False


def test_s3_credentials_only_by_reference(
    manifest: Callable[..., Any], settings: OperatorSettings
) -> None:
    job = load(
        manifest,
        model={"uri": "s3://models/llama", "credentialsSecretRef": {"name": "s3"}},
        output={"uri": "s3://results/tune"},
    )
    pod = render_worker_pod(job, 1, 0, settings)
    e = env(pod)
    assert e["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "s3"
    assert e["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "AWS_SECRET_ACCESS_KEY"
    assert e["AWS_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert all("value" not in v for k, v in e.items() if k.startswith("AWS_"))
    assert e["KUBETUNE_OUTPUT_DIR"]["value"] == settings.scratch_output_dir
    assert not [v for v in pod["spec"]["volumes"] if "secret" in v]


def test_image_default_and_override(job: FineTuneJob, manifest: Callable[..., Any]) -> None:
    settings = OperatorSettings(trainer_image="registry.local/trainer:9", leader_election=False)
    assert container(render_worker_pod(job, 1, 0, settings))["image"] == "registry.local/trainer:9"
    own = load(
        manifest,
        image="example.com/mine:1",
        imagePullPolicy="Always",
        imagePullSecrets=[{"name": "pull"}],
        serviceAccountName="trainer",
    )
    pod = render_worker_pod(own, 1, 0, settings)
    assert container(pod)["image"] == "example.com/mine:1"
    assert container(pod)["imagePullPolicy"] == "Always"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "pull"}]
    assert pod["spec"]["serviceAccountName"] == "trainer"
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_kueue_labels(manifest: Callable[..., Any], settings: OperatorSettings) -> None:
    job = load(manifest, runPolicy={"queueName": "team-a"})
    meta = render_worker_pod(job, 3, 0, settings)["metadata"]
    assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert meta["labels"]["kueue.x-k8s.io/pod-group-name"] == "tune-a3"
    assert meta["annotations"]["kueue.x-k8s.io/pod-group-total-count"] == "2"
    assert meta["annotations"]["kueue.x-k8s.io/retriable-in-group"] == "false"
    plain = render_worker_pod(load(manifest), 1, 0, settings)["metadata"]
    assert not any(k.startswith("kueue.") for k in plain["labels"])


def test_validation_pod(job: FineTuneJob, settings: OperatorSettings) -> None:
    pod = render_validation_pod(job, 2, settings)
    c = container(pod)
    assert pod["metadata"]["name"] == "tune-validate-2"
    assert c["command"] == ["python", "-m", "kubetune_trainer", "--validate-only"]
    assert c["resources"]["limits"] == {"cpu": "500m", "memory": "1Gi"}
    assert env(pod)["KUBETUNE_VALIDATE_ONLY"]["value"] == "1"
    assert env(pod)["KUBETUNE_OUTPUT_DIR"]["value"] == "/mnt/pvc/ckpt/tune", "same as training"
    assert "schedulingGates" not in pod["spec"]
    assert pod["spec"]["activeDeadlineSeconds"] == settings.validation_timeout_seconds
    mounts = {m["mountPath"]: m["readOnly"] for m in c["volumeMounts"]}
    assert "/mnt/pvc/ckpt" not in mounts, "validation needs no output volume"
    assert mounts["/mnt/pvc/models"] is True
    assert pod["metadata"]["labels"][naming.LABEL_ROLE] == "validation"
    assert pod["metadata"]["ownerReferences"][0]["controller"] is True


def test_config_map_holds_the_resolved_job(job: FineTuneJob) -> None:
    resolved = resolve(job, attempt=2)
    cm = render_config_map(job, resolved)
    doc = ResolvedJob.model_validate_json(cm["data"]["job.json"])
    assert doc.attempt == 2 and doc.derived.world_size == 16
    assert doc.config_hash() == resolved.config_hash()
    assert cm["metadata"]["annotations"][naming.ANNOTATION_CONFIG_HASH] == resolved.config_hash()
    assert cm["metadata"]["ownerReferences"][0]["uid"] == "uid-tune"
    assert json.loads(cm["data"]["job.json"])["kind"] == "ResolvedFineTuneJob"


def test_headless_service(job: FineTuneJob, settings: OperatorSettings) -> None:
    svc = render_service(job, settings)
    assert svc["metadata"]["name"] == "tune"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {naming.LABEL_JOB: "tune", naming.LABEL_ROLE: "worker"}
    assert svc["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"


def test_extra_annotations_from_settings(job: FineTuneJob) -> None:
    settings = OperatorSettings(
        pod_annotations={"prometheus.io/scrape": "true"},
        validation_pod_annotations={"sidecar.istio.io/inject": "false"},
        leader_election=False,
    )
    assert (
        render_worker_pod(job, 1, 0, settings)["metadata"]["annotations"]["prometheus.io/scrape"]
        == "true"
    )
    assert render_validation_pod(job, 1, settings)["metadata"]["annotations"] == {
        "sidecar.istio.io/inject": "false"
    }


def test_validation_pod_of_an_s3_job_names_an_output_dir(
    manifest: Callable[..., Any], settings: OperatorSettings
) -> None:
    job = load(manifest, output={"uri": "s3://results/tune"})
    pod = render_validation_pod(job, 1, settings)
    # the trainer refuses s3:// outputs without KUBETUNE_OUTPUT_DIR, even in validate-only mode
    assert env(pod)["KUBETUNE_OUTPUT_DIR"]["value"] == settings.scratch_output_dir
    assert not [v for v in pod["spec"]["volumes"] if "emptyDir" in v]
