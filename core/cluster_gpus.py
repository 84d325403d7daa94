"""GPU node types of a cluster file: what ``prefloop plan`` sets each actor's memory against.

Reads the three shapes of cluster file that prefloop ships: the Ray cluster launcher's (AWS ``InstanceType`` /
GCP ``machineType`` under ``available_node_types``), and KubeRay's RayJob / RayService (``workerGroupSpecs``: the
container's ``nvidia.com/gpu`` and the instance type in the pod's ``nodeSelector``, or in its
``prefloop/instance-type`` annotation). GPU memory comes from the
table below (per GPU, as ``nvidia-smi`` reports it, in MiB); an instance type not in it is an error naming the
node type, so a plan is never checked against a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MIB = 1024 ** 2
# KubeRay pods without a nodeSelector name their instance type for the plan in this pod annotation
ANNOTATION = "prefloop/instance-type"

# instance / machine type -> (GPUs, GPU model, MiB per GPU)
GPU_INSTANCES: dict[str, tuple[int, str, int]] = {
    # AWS
    "g5.xlarge": (1, "A10G", 23028), "g5.2xlarge": (1, "A10G", 23028), "g5.4xlarge": (1, "A10G", 23028),
    "g5.8xlarge": (1, "A10G", 23028), "g5.12xlarge": (4, "A10G", 23028), "g5.48xlarge": (8, "A10G", 23028),
    "g6.2xlarge": (1, "L4", 23034), "g6e.2xlarge": (1, "L40S", 46068), "g6e.12xlarge": (4, "L40S", 46068),
    "p4d.24xlarge": (8, "A100-SXM4-40GB", 40960), "p4de.24xlarge": (8, "A100-SXM4-80GB", 81920),
    "p5.48xlarge": (8, "H100-SXM-80GB", 81559), "p5e.48xlarge": (8, "H200", 143771),
    # GCP
    "g2-standard-8": (1, "L4", 23034), "g2-standard-24": (2, "L4", 23034),
    "a2-highgpu-1g": (1, "A100-SXM4-40GB", 40960), "a2-highgpu-8g": (8, "A100-SXM4-40GB", 40960),
    "a2-ultragpu-8g": (8, "A100-SXM4-80GB", 81920), "a3-highgpu-8g": (8, "H100-SXM-80GB", 81559),
}


@dataclass(frozen=True)
class GpuNode:
    """One node type that has GPUs."""

    name: str            # the node type / worker group
    instance: str
    gpus: int
    gpu_model: str
    gpu_bytes: int       # per GPU
    max_nodes: int = 1   # the most nodes of this type the cluster scales to


def _lookup(node: str, instance: str | None, source: str, max_nodes: int = 1) -> GpuNode:
    if instance not in GPU_INSTANCES:
        raise ValueError(f"{source}: node type {node!r}: instance type {instance!r} is not in prefloop's GPU table "
                         f"(core/cluster_gpus.py GPU_INSTANCES); add it with its GPU memory")
    gpus, model, mib = GPU_INSTANCES[instance]
    return GpuNode(node, instance, gpus, model, mib * MIB, int(max_nodes))


def _launcher_nodes(doc: dict[str, Any], source: str) -> list[GpuNode]:
    nodes = []
    for name, spec in (doc.get("available_node_types") or {}).items():
        cfg = spec.get("node_config") or {}
        instance = cfg.get("InstanceType") or cfg.get("machineType")
        gpus = (spec.get("resources") or {}).get("GPU")
        if instance in GPU_INSTANCES or gpus:
            # a node type without max_workers may take the whole cluster's (Ray's default: 2)
            most = spec.get("max_workers", doc.get("max_workers", 2))
            nodes.append(_lookup(name, instance, source, most))
    return nodes


def _kuberay_groups(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec") or {}
    cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or {}
    return cluster.get("workerGroupSpecs") or []


def _kuberay_nodes(docs: list[dict[str, Any]], source: str) -> list[GpuNode]:
    nodes = []
    for doc in docs:
        for group in _kuberay_groups(doc):
            pod = (group.get("template") or {}).get("spec") or {}
            gpus = 0
            for c in pod.get("containers") or []:
                limits = (c.get("resources") or {}).get("limits") or {}
                gpus = max(gpus, int(limits.get("nvidia.com/gpu", 0)))
            if not gpus:
                continue
            selector = pod.get("nodeSelector") or {}
            notes = ((group.get("template") or {}).get("metadata") or {}).get("annotations") or {}
            instance = selector.get("node.kubernetes.io/instance-type") or notes.get(ANNOTATION)
            if instance is None:
                raise ValueError(f"{source}: worker group {group.get('groupName')!r} has {gpus} GPU(s) but neither a "
                                 f"nodeSelector node.kubernetes.io/instance-type nor a pod annotation {ANNOTATION}: "
                                 "the plan cannot know its GPU memory")
            node = _lookup(str(group.get("groupName")), instance, source)
            most = group.get("maxReplicas", group.get("replicas", 1))
            nodes.append(GpuNode(node.name, node.instance, gpus, node.gpu_model, node.gpu_bytes, int(most)))
    return nodes


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read the cluster file: {err}") from None


def gpu_node_cap(path: str | Path) -> int | None:
    """The most GPU nodes a cluster launcher file lets run at once: its ``max_workers`` less the nodes its
    other (CPU) node types must keep (``min_workers``); None for KubeRay files (no overall cap)."""
    docs = [d for d in _read(Path(path)) if "available_node_types" in d]
    if not docs:
        return None
    gpu = {n.name for n in _launcher_nodes(docs[0], str(path))}
    types = docs[0]["available_node_types"] or {}
    head = docs[0].get("head_node_type")
    kept = sum(int(spec.get("min_workers", 0)) for name, spec in types.items() if name not in gpu and name != head)
    return int(docs[0].get("max_workers", 2)) - kept


def gpu_nodes(path: str | Path) -> list[GpuNode]:
    """The GPU node types of a cluster launcher or KubeRay file; a file with none is an error naming it."""
    path = Path(path)
    docs = _read(path)
    if any("available_node_types" in d for d in docs):
        nodes = [n for d in docs for n in _launcher_nodes(d, str(path))]
    else:
        nodes = _kuberay_nodes(docs, str(path))
    if not nodes:
        raise ValueError(f"{path}: no node type with GPUs found (cluster launcher available_node_types or KubeRay "
                         "workerGroupSpecs with nvidia.com/gpu)")
    return nodes
