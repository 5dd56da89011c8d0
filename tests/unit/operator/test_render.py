"""Rendering of the ConfigMap, Service, validation pod and training pods."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from kubetune.api import FineTuneJob
from kubetune.api.resolve import ResolvedJob, resolve
from kubetune.api.validation import validate_manifest
from kubetune_operator import naming
from kubetune_operator.render import (
    render_config_map,
    render_service,
    render_validation_pod,
    render_worker_pod,
    torchrun_command,
)
from kubetune_operator.render.configmap import trainer_document
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
            "ephemeral-storage": settings.ephemeral_storage,  # issue 9: bounded disk
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


@pytest.mark.parametrize(
    ("memory", "size"),
    [("8Gi", "2048Mi"), ("8G", "1907Mi"), ("64Gi", "16384Mi"), ("1Ti", "16384Mi")],
)
def test_default_shared_memory_scales_with_memory(
    manifest: Callable[..., Any], settings: OperatorSettings, memory: str, size: str
) -> None:
    """A small pod gets a small /dev/shm instead of a refusal for a field it never set."""
    job = load(manifest, resources={"memory": memory})
    report = validate_manifest(manifest(resources={"memory": memory}))
    assert report.ok, report.errors
    pod = render_worker_pod(job, 1, 0, settings, config_hash="h")
    shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": size}


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


def test_every_input_location_is_mounted_read_only(
    manifest: Callable[..., Any], settings: OperatorSettings
) -> None:
    """Models named anywhere in the spec (reward, value, held-out judge), not just the base
    model and data, are mounted: a missed claim fails the trainer hours in."""
    job = load(
        manifest,
        method="ppo",
        dataset={"train": "pvc://data/prompts.jsonl", "format": "promptOnly"},
        rlhf={
            "reward": {"model": "pvc://reward-models/rm-v3"},
            "ppo": {"valueModel": "pvc://value-models/critic"},
            "guards": {"heldOutRewardModel": "pvc://judges/rm-held-out"},
        },
    )
    for pod in (render_worker_pod(job, 1, 0, settings), render_validation_pod(job, 1, settings)):
        mounts = {m["mountPath"]: m.get("readOnly") for m in container(pod)["volumeMounts"]}
        for claim in ("models", "data", "reward-models", "value-models", "judges"):
            assert mounts[f"/mnt/pvc/{claim}"] is True, claim


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


def test_pods_carry_no_kueue_labels(
    manifest: Callable[..., Any], settings: OperatorSettings
) -> None:
    # The job's Workload is what Kueue queues (queueing.py); a queue-name label on the pods
    # would make Kueue's pod integration queue them a second time.
    job = load(manifest, runPolicy={"queueName": "team-a"})
    meta = render_worker_pod(job, 3, 0, settings)["metadata"]
    assert not any(k.startswith("kueue.") for k in meta["labels"])
    assert not any(k.startswith("kueue.") for k in meta.get("annotations", {}))


def test_validation_pod(job: FineTuneJob, settings: OperatorSettings) -> None:
    pod = render_validation_pod(job, 2, settings)
    c = container(pod)
    assert pod["metadata"]["name"] == "tune-validate-2"
    assert c["command"] == ["python", "-m", "kubetune_trainer", "--validate-only"]
    assert c["resources"]["limits"] == {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "4Gi"}
    assert env(pod)["KUBETUNE_VALIDATE_ONLY"]["value"] == "1"
    assert env(pod)["KUBETUNE_OUTPUT_DIR"]["value"] == "/mnt/pvc/ckpt/tune", "same as training"
    assert "schedulingGates" not in pod["spec"]
    assert pod["spec"]["activeDeadlineSeconds"] == settings.validation_timeout_seconds
    mounts = {m["mountPath"]: m["readOnly"] for m in c["volumeMounts"]}
    assert "/mnt/pvc/ckpt" not in mounts, "validation needs no output volume"
    assert mounts["/mnt/pvc/models"] is True
    assert pod["metadata"]["labels"][naming.LABEL_ROLE] == "validation"
    assert pod["metadata"]["ownerReferences"][0]["controller"] is True
    # The job's tolerations come along (a tainted pool may check its inputs too); its GPU
    # nodeSelector does not (validation needs no GPU).
    assert pod["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert "nodeSelector" not in pod["spec"]


def test_config_map_holds_the_resolved_job(job: FineTuneJob) -> None:
    resolved = resolve(job, attempt=2)
    cm = render_config_map(job, resolved)
    doc = ResolvedJob.model_validate_json(cm["data"]["job.json"])
    assert doc.attempt == 2 and doc.derived.world_size == 16
    # issue 9: the document holds no spec.env, so its hash is that of trainer_document()
    assert doc == trainer_document(resolved)
    assert doc.config_hash() == trainer_document(resolved).config_hash()
    assert cm["metadata"]["annotations"][naming.ANNOTATION_CONFIG_HASH] == doc.config_hash()
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
    # no output staging volume (issue 9: only the /tmp and $HOME scratch emptyDirs)
    mounted = {m["mountPath"] for m in container(pod)["volumeMounts"]}
    assert settings.scratch_output_dir not in mounted and mounted >= {"/tmp", "/home/kubetune"}


# -- issue 9: what the job's objects may and may not carry -----------------------------------------
def test_config_map_never_holds_user_env(job: FineTuneJob, settings: OperatorSettings) -> None:
    """Env values reach the pods through the container env only, never through the ConfigMap
    (readable with the ``view`` role); the hash the trainer computes is the operator's."""
    secret_job = job.model_copy(deep=True)
    secret_job.spec.env[0].value = "s3cr3t-value-9f2"
    resolved = resolve(secret_job, attempt=1)
    cm = render_config_map(secret_job, resolved)
    text = cm["data"]["job.json"]
    assert "s3cr3t-value-9f2" not in text and "WANDB_MODE" not in text
    assert json.loads(text)["spec"].get("env", []) == []
    doc = ResolvedJob.model_validate_json(text)
    assert cm["metadata"]["annotations"][naming.ANNOTATION_CONFIG_HASH] == doc.config_hash()
    pod = render_worker_pod(secret_job, 1, 0, settings)
    assert env(pod)["WANDB_MODE"]["value"] == "s3cr3t-value-9f2", "the pod still gets it"


def test_lifecycle_hands_the_trainer_no_env(make_cluster: Any) -> None:
    c = make_cluster(env=[{"name": "DEBUG_LEVEL", "value": "very-private-9f2"}])
    c.start_running()
    (cm,) = c.config_maps.values()
    assert "very-private-9f2" not in json.dumps(cm)
    doc = ResolvedJob.model_validate_json(cm["data"]["job.json"])
    hashes = {p["metadata"]["annotations"][naming.ANNOTATION_CONFIG_HASH] for p in c.workers()}
    assert hashes == {doc.config_hash()} == {c.status["lineage"]["resolvedConfigHash"]}
    assert all(
        {"name": "DEBUG_LEVEL", "value": "very-private-9f2"} in p["spec"]["containers"][0]["env"]
        for p in c.workers()
    )


@pytest.mark.parametrize("kind", ["worker", "validation"])
def test_read_only_root_with_writable_scratch(
    kind: str, job: FineTuneJob, settings: OperatorSettings
) -> None:
    pod = (
        render_worker_pod(job, 1, 0, settings)
        if kind == "worker"
        else render_validation_pod(job, 1, settings)
    )
    c = container(pod)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for path in ("/tmp", "/home/kubetune"):
        assert "emptyDir" in volumes[mounts[path]["name"]] and not mounts[path].get("readOnly")
    assert env(pod)["HOME"]["value"] == "/home/kubetune"
    assert env(pod)["TMPDIR"]["value"] == "/tmp"
    limits, requests = c["resources"]["limits"], c["resources"]["requests"]
    assert limits["ephemeral-storage"] == requests["ephemeral-storage"]
    assert restricted_violations(pod) == []


def test_ephemeral_storage_can_be_turned_off(job: FineTuneJob, settings_factory: Any) -> None:
    settings = settings_factory(ephemeral_storage="", validation_ephemeral_storage="")
    assert (
        "ephemeral-storage"
        not in container(render_worker_pod(job, 1, 0, settings))["resources"]["limits"]
    )
    assert (
        "ephemeral-storage"
        not in container(render_validation_pod(job, 1, settings))["resources"]["limits"]
    )


def test_network_policy_admits_only_the_gang_and_the_operator(
    job: FineTuneJob, settings_factory: Any
) -> None:
    from kubetune_operator.render.networkpolicy import render_network_policy

    settings = settings_factory(operator_namespace="kubetune-system")
    policy = render_network_policy(job, settings)
    assert policy["kind"] == "NetworkPolicy" and policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["metadata"]["namespace"] == "team"
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "uid-tune"
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"], "egress (object stores, DNS) stays open"
    # it selects every pod of the job (what the rendered pods carry)
    worker = render_worker_pod(job, 1, 0, settings)["metadata"]["labels"]
    validator = render_validation_pod(job, 1, settings)["metadata"]["labels"]
    for labels in (worker, validator):
        assert spec["podSelector"]["matchLabels"].items() <= labels.items()
    gang_rule, operator_rule = spec["ingress"]
    # the gang: any port (rendezvous, NCCL's ephemeral ports), from the job's workers only
    assert "ports" not in gang_rule
    (gang_peer,) = gang_rule["from"]
    assert gang_peer["podSelector"]["matchLabels"].items() <= worker.items()
    assert "namespaceSelector" not in gang_peer, "same namespace only"
    assert gang_peer["podSelector"]["matchLabels"][naming.LABEL_ROLE] == naming.ROLE_WORKER
    # the operator: the progress/metrics port only, its namespace and pod labels
    assert operator_rule["ports"] == [{"protocol": "TCP", "port": settings.progress_port}]
    (op_peer,) = operator_rule["from"]
    assert op_peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "kubetune-system"
    }
    assert op_peer["podSelector"]["matchLabels"] == settings.operator_pod_labels
    rdzv = settings.rendezvous_port
    assert all(p["port"] != rdzv for r in spec["ingress"] for p in r.get("ports", []))


def test_network_policy_may_admit_a_scraper_namespace(
    job: FineTuneJob, settings_factory: Any
) -> None:
    from kubetune_operator.render.networkpolicy import render_network_policy

    settings = settings_factory(metrics_scrape_namespaces=["monitoring"])
    rules = render_network_policy(job, settings)["spec"]["ingress"]
    assert rules[-1] == {
        "from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
        "ports": [{"protocol": "TCP", "port": settings.progress_port}],
    }


def test_gang_creation_creates_the_network_policy(make_cluster: Any, settings_factory: Any) -> None:
    from kubetune_operator.plan import EnsureNetworkPolicy

    c = make_cluster()
    c.step()
    c.pass_validation()
    plan = c.step()
    (np_action,) = [a for a in plan.actions if isinstance(a, EnsureNetworkPolicy)]
    kinds = [type(a).__name__ for a in plan.actions]
    assert kinds.index("EnsureNetworkPolicy") < kinds.index("CreatePod"), "before any pod"
    assert np_action.body["metadata"]["ownerReferences"][0]["uid"] == "uid-tune"
    off = make_cluster(settings=settings_factory(network_policy=False))
    off.step()
    off.pass_validation()
    assert not [a for a in off.step().actions if isinstance(a, EnsureNetworkPolicy)]
