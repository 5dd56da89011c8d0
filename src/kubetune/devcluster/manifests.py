"""Fake nodes and KWOK Stage resources of the dev cluster.

Nodes
-----
4 GPU nodes (``kwok-gpu-0..3``, 8 ``nvidia.com/gpu`` each, labelled
``nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3`` and ``kubetune.io/node-pool=gpu``) and 2 CPU-only
nodes (``kwok-cpu-0..1``, ``kubetune.io/node-pool=cpu``). Every node carries the annotation
``kwok.x-k8s.io/node: fake``, which is how KWOK selects the nodes it plays the kubelet for
(``--manage-nodes-with-annotation-selector``). The nodes are deliberately NOT tainted: the
operator does not add a KWOK toleration to the pods it creates, and in this cluster every node is
fake anyway, so pods schedule onto them exactly as they would onto real nodes.

Pod lifecycle (KWOK Stages)
---------------------------
* A pod bound to a fake node goes ``Pending -> Running`` (all containers running and ready).
* It stays Running until it is annotated (or created) with ``kwok.kubetune.io/exit-code``; then
  every container terminates with that exit code (or only ``kwok.kubetune.io/exit-container``
  with that code, the other containers with 0) and the pod becomes ``Succeeded`` (code 0) or
  ``Failed`` (any other code). Optional annotations:

  - ``kwok.kubetune.io/exit-reason``: terminated reason (default ``Completed``/``Error``),
    e.g. ``OOMKilled``;
  - ``kwok.kubetune.io/exit-message``: terminated message;
  - ``kwok.kubetune.io/exit-delay``: a Go duration (``"30s"``) to wait before terminating, so a
    pod template can say "run for 30s then exit 0".

  See :func:`kubetune.devcluster.simulate.finish_pod`.
* A pod being deleted (``deletionTimestamp`` set) is removed, as a kubelet would.

Node lifecycle
--------------
* A fake node becomes Ready and KWOK keeps its Lease renewed.
* Annotating a node ``kwok.kubetune.io/node-ready: "false"`` makes its Ready condition ``False``
  (reason ``KubeletNotReady``); the node lifecycle controller then taints it
  ``node.kubernetes.io/not-ready``. Removing the annotation makes it Ready again. See
  :func:`kubetune.devcluster.simulate.set_node_ready`; deleting the Node object simulates losing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
FAKE_NODE_SELECTOR = f"{FAKE_NODE_ANNOTATION}=fake"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
NODE_POOL_LABEL = "kubetune.io/node-pool"

EXIT_CODE_ANNOTATION = "kwok.kubetune.io/exit-code"
EXIT_REASON_ANNOTATION = "kwok.kubetune.io/exit-reason"
EXIT_MESSAGE_ANNOTATION = "kwok.kubetune.io/exit-message"
EXIT_CONTAINER_ANNOTATION = "kwok.kubetune.io/exit-container"
EXIT_DELAY_ANNOTATION = "kwok.kubetune.io/exit-delay"
NODE_READY_ANNOTATION = "kwok.kubetune.io/node-ready"
NODE_NOT_READY_REASON_ANNOTATION = "kwok.kubetune.io/not-ready-reason"


@dataclass(frozen=True)
class NodeSpec:
    name: str
    pool: str
    cpu: str
    memory: str
    gpus: int = 0
    gpu_product: str = GPU_PRODUCT
    extra_labels: dict[str, str] = field(default_factory=dict)


def default_nodes(gpu_nodes: int = 4, cpu_nodes: int = 2, gpus_per_node: int = 8) -> list[NodeSpec]:
    nodes = [
        NodeSpec(f"kwok-gpu-{i}", "gpu", cpu="96", memory="1024Gi", gpus=gpus_per_node)
        for i in range(gpu_nodes)
    ]
    nodes += [NodeSpec(f"kwok-cpu-{i}", "cpu", cpu="32", memory="128Gi") for i in range(cpu_nodes)]
    return nodes


def node_manifest(spec: NodeSpec) -> dict[str, Any]:
    labels = {
        "kubernetes.io/hostname": spec.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": "kwok-fake",
        "topology.kubernetes.io/zone": "kwok-zone-a",
        "type": "kwok",
        NODE_POOL_LABEL: spec.pool,
    }
    resources = {
        "cpu": spec.cpu,
        "memory": spec.memory,
        "ephemeral-storage": "2Ti",
        "pods": "110",
    }
    if spec.gpus:
        labels.update(
            {
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": spec.gpu_product,
                "nvidia.com/gpu.count": str(spec.gpus),
            }
        )
        resources[GPU_RESOURCE] = str(spec.gpus)
    labels.update(spec.extra_labels)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": spec.name,
            "labels": labels,
            "annotations": {
                FAKE_NODE_ANNOTATION: "fake",
                "node.alpha.kubernetes.io/ttl": "0",
            },
        },
        "spec": {},
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "osImage": "kwok fake node",
            },
        },
    }


def nodes_yaml(nodes: list[NodeSpec]) -> str:
    return yaml.safe_dump_all([node_manifest(n) for n in nodes], sort_keys=False)


_NODE_NOT_MARKED_NOT_READY = f"""\
    - key: '.metadata.annotations["{NODE_READY_ANNOTATION}"]'
      operator: 'NotIn'
      values:
      - 'false'
"""

_NODE_CONDITIONS = """\
      {{ $now := Now }}
      {{ $lastTransitionTime := or .metadata.creationTimestamp $now }}
      conditions:
      {{ range NodeConditions }}
      - lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ $lastTransitionTime | Quote }}
        message: {{ .message | Quote }}
        reason: {{ .reason | Quote }}
        status: {{ .status | Quote }}
        type: {{ .type | Quote }}
      {{ end }}
"""

# The Stage resources given to KWOK with --config. Based on KWOK's own node-fast,
# node-heartbeat-with-lease, node-chaos and pod-fast stages, plus the kubetune conventions.
STAGES_YAML = (
    f"""\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: kubetune-node-initialize
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values:
      - 'True'
{_NODE_NOT_MARKED_NOT_READY}\
  next:
    statusTemplate: |
{_NODE_CONDITIONS}\
"""
    + """\
      {{ $hasInternalIP := false }}
      {{ $hasHostname := false }}
      {{ range .status.addresses }}
        {{ if eq .type "InternalIP" }}{{ $hasInternalIP = true }}{{ end }}
        {{ if eq .type "Hostname" }}{{ $hasHostname = true }}{{ end }}
      {{ end }}
      {{ if or (not $hasInternalIP) (not $hasHostname) }}
      addresses:
      {{ end }}
      {{ if not $hasInternalIP }}
      {{ with NodeIP }}
      - address: {{ . | Quote }}
        type: InternalIP
      {{ end }}
      {{ end }}
      {{ if not $hasHostname }}
      {{ with NodeName }}
      - address: {{ . | Quote }}
        type: Hostname
      {{ end }}
      {{ end }}
      {{ with NodePort }}
      daemonEndpoints:
        kubeletEndpoint:
          Port: {{ . }}
      {{ end }}
      allocatable:
      {{ with .status.allocatable }}
      {{ YAML . 1 }}
      {{ else }}
        cpu: 1k
        memory: 1Ti
        pods: 1M
      {{ end }}
      capacity:
      {{ with .status.capacity }}
      {{ YAML . 1 }}
      {{ else }}
        cpu: 1k
        memory: 1Ti
        pods: 1M
      {{ end }}
      {{ $nodeInfo := .status.nodeInfo }}
      {{ $kwokVersion := printf "kwok-%s" Version }}
      nodeInfo:
        architecture: {{ or $nodeInfo.architecture "amd64" }}
        bootID: {{ or $nodeInfo.bootID `""` }}
        containerRuntimeVersion: {{ or $nodeInfo.containerRuntimeVersion $kwokVersion }}
        kernelVersion: {{ or $nodeInfo.kernelVersion $kwokVersion }}
        kubeProxyVersion: {{ or $nodeInfo.kubeProxyVersion $kwokVersion }}
        kubeletVersion: {{ or $nodeInfo.kubeletVersion $kwokVersion }}
        machineID: {{ or $nodeInfo.machineID `""` }}
        operatingSystem: {{ or $nodeInfo.operatingSystem "linux" }}
        osImage: {{ or $nodeInfo.osImage `""` }}
        systemUUID: {{ or $nodeInfo.systemUUID `""` }}
      phase: Running
---
"""
    + f"""\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: kubetune-node-heartbeat-with-lease
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: '.status.phase'
      operator: 'In'
      values:
      - 'Running'
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'In'
      values:
      - 'True'
{_NODE_NOT_MARKED_NOT_READY}\
  delay:
    durationMilliseconds: 600000
    jitterDurationMilliseconds: 610000
  next:
    statusTemplate: |
{_NODE_CONDITIONS}\
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: kubetune-node-not-ready
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: '.metadata.annotations["{NODE_READY_ANNOTATION}"]'
      operator: 'In'
      values:
      - 'false'
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'In'
      values:
      - 'True'
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      {{{{ $annotations := or .metadata.annotations dict }}}}
      {{{{ $reason := index $annotations "{NODE_NOT_READY_REASON_ANNOTATION}" }}}}
      {{{{ $reason = or $reason "KubeletNotReady" }}}}
      conditions:
      {{{{ range NodeConditions }}}}
      {{{{ if eq .type "Ready" }}}}
      - lastHeartbeatTime: {{{{ $now | Quote }}}}
        lastTransitionTime: {{{{ $now | Quote }}}}
        message: "simulated by kubetune: node marked not ready"
        reason: {{{{ $reason | Quote }}}}
        status: "False"
        type: Ready
      {{{{ else }}}}
      - lastHeartbeatTime: {{{{ $now | Quote }}}}
        lastTransitionTime: {{{{ $now | Quote }}}}
        message: {{{{ .message | Quote }}}}
        reason: {{{{ .reason | Quote }}}}
        status: {{{{ .status | Quote }}}}
        type: {{{{ .type | Quote }}}}
      {{{{ end }}}}
      {{{{ end }}}}
---
"""
    + """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: kubetune-pod-ready
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values:
      - 'Pending'
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values:
      - 'True'
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: ContainersReady
      {{ range .spec.readinessGates }}
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: {{ .conditionType | Quote }}
      {{ end }}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        started: true
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{ end }}
      initContainerStatuses:
      {{ range .spec.initContainers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        {{ if eq .restartPolicy "Always" }}
        started: true
        state:
          running:
            startedAt: {{ $now | Quote }}
        {{ else }}
        state:
          terminated:
            exitCode: 0
            finishedAt: {{ $now | Quote }}
            reason: Completed
            startedAt: {{ $now | Quote }}
        {{ end }}
      {{ end }}
      {{ $hostIPs := NodeIPsWith .spec.nodeName }}
      {{ with $hostIPs }}
      hostIP: {{ index . 0 | Quote }}
      hostIPs:
      {{ range . }}
      - ip: {{ . | Quote }}
      {{ end }}
      {{ end }}
      {{ $m := .metadata }}
      {{ $podIPs := PodIPsWith .spec.nodeName ( or .spec.hostNetwork false )
           ( or $m.uid "" ) ( or $m.name "" ) ( or $m.namespace "" ) }}
      {{ with $podIPs }}
      podIP: {{ index . 0 | Quote }}
      podIPs:
      {{ range . }}
      - ip: {{ . | Quote }}
      {{ end }}
      {{ end }}
      phase: Running
      startTime: {{ $now | Quote }}
---
"""
    + f"""\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: kubetune-pod-exit
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values:
      - 'Running'
    - key: '.metadata.annotations["{EXIT_CODE_ANNOTATION}"]'
      operator: 'Exists'
  delay:
    durationMilliseconds: 0
    durationFrom:
      expressionFrom: '.metadata.annotations["{EXIT_DELAY_ANNOTATION}"]'
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      {{{{ $root := . }}}}
      {{{{ $annotations := or .metadata.annotations dict }}}}
      {{{{ $code := index $annotations "{EXIT_CODE_ANNOTATION}" }}}}
      {{{{ $ok := eq $code "0" }}}}
      {{{{ $reason := "Error" }}}}
      {{{{ if $ok }}}}{{{{ $reason = "Completed" }}}}{{{{ end }}}}
      {{{{ with index $annotations "{EXIT_REASON_ANNOTATION}" }}}}{{{{ $reason = . }}}}{{{{ end }}}}
      {{{{ $message := or ( index $annotations "{EXIT_MESSAGE_ANNOTATION}" ) "" }}}}
      {{{{ $only := or ( index $annotations "{EXIT_CONTAINER_ANNOTATION}" ) "" }}}}
      {{{{ $podReason := "PodFailed" }}}}
      {{{{ if $ok }}}}{{{{ $podReason = "PodCompleted" }}}}{{{{ end }}}}
      {{{{ $startedAt := or .status.startTime $now }}}}
      conditions:
      - lastTransitionTime: {{{{ $now | Quote }}}}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{{{ $now | Quote }}}}
        reason: {{{{ $podReason | Quote }}}}
        status: "False"
        type: Ready
      - lastTransitionTime: {{{{ $now | Quote }}}}
        reason: {{{{ $podReason | Quote }}}}
        status: "False"
        type: ContainersReady
      containerStatuses:
      {{{{ range .spec.containers }}}}
      - image: {{{{ .image | Quote }}}}
        name: {{{{ .name | Quote }}}}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
      {{{{ if or ( not $only ) ( eq .name $only ) }}}}
            exitCode: {{{{ $code }}}}
            reason: {{{{ $reason | Quote }}}}
            message: {{{{ $message | Quote }}}}
      {{{{ else }}}}
            exitCode: 0
            reason: Completed
      {{{{ end }}}}
            startedAt: {{{{ $startedAt | Quote }}}}
            finishedAt: {{{{ $now | Quote }}}}
      {{{{ end }}}}
      phase: {{{{ if $ok }}}}Succeeded{{{{ else }}}}Failed{{{{ end }}}}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: kubetune-pod-delete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'Exists'
  next:
    delete: true
"""
)
