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

Pod lifecycle (KWOK Stages, ``data/stages.yaml``)
-------------------------------------------------
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

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from kubetune.devcluster.versions import DATA_DIR

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


def stages_yaml() -> str:
    """KWOK's Stage config (``data/stages.yaml``) with the annotation names filled in.

    The YAML stays plain KWOK config (diffable against KWOK's own stages); only the annotation
    names are parameters, so they are defined once, here, for the stages and their callers.
    """
    params = {
        "EXIT_CODE_ANNOTATION": EXIT_CODE_ANNOTATION,
        "EXIT_REASON_ANNOTATION": EXIT_REASON_ANNOTATION,
        "EXIT_MESSAGE_ANNOTATION": EXIT_MESSAGE_ANNOTATION,
        "EXIT_CONTAINER_ANNOTATION": EXIT_CONTAINER_ANNOTATION,
        "EXIT_DELAY_ANNOTATION": EXIT_DELAY_ANNOTATION,
        "NODE_READY_ANNOTATION": NODE_READY_ANNOTATION,
        "NODE_NOT_READY_REASON_ANNOTATION": NODE_NOT_READY_REASON_ANNOTATION,
    }
    text = (DATA_DIR / "stages.yaml").read_text()
    return re.sub(r"\$\{([A-Z_]+)\}", lambda m: params[m[1]], text)
