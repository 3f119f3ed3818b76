"""Does one trial fit the cluster? Checked before any trial is submitted, so a request that can never be
met fails at once with the numbers instead of waiting forever (docs/cluster.md, "Resources": Ray does not
call a request infeasible when the node's total could hold it, it just waits)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from search_spaces.loader import Resources

DRIVER_CPUS = 0.05  # what the Tune trial actor (the trial's driver) holds while its workers or probe run


@dataclass(frozen=True)
class Node:
    cpus: float
    gpus: float


def _fmt(x: float) -> str:
    return f"{x:g}"


def unmet(res: Resources, nodes: Sequence[Node], driver: float = DRIVER_CPUS) -> list[str]:
    """What one trial needs at once that ``nodes`` (the alive nodes' total resources) cannot give, as
    sentences naming the numbers; empty when it fits. A trial holds its workers plus, with several, its
    driver (``driver`` CPUs; 0 when the trial trains in its own process), and with ``resources.probe: beside``
    one more worker's share for the probe task beside them (otherwise the probe runs on the workers)."""
    total_cpu, total_gpu = sum(n.cpus for n in nodes), sum(n.gpus for n in nodes)
    problems = []
    shares = res.workers + (res.probe == "beside")
    train_cpu = shares * res.cpus_per_worker + driver
    train_gpu = shares * res.gpus_per_worker
    if train_cpu > total_cpu + 1e-9 or train_gpu > total_gpu + 1e-9:
        probe = " and the probe task beside them" if res.probe == "beside" else ""
        problems.append(f"training needs {_fmt(train_cpu)} CPUs and {_fmt(train_gpu)} GPUs at once "
                        f"({shares} x {_fmt(res.cpus_per_worker)} CPU / {_fmt(res.gpus_per_worker)} GPU for "
                        f"{res.workers} workers{probe}, + {driver} for the trial driver); the cluster has "
                        f"{_fmt(total_cpu)} CPUs and {_fmt(total_gpu)} GPUs")
    if not any(n.cpus >= res.cpus_per_worker and n.gpus >= res.gpus_per_worker for n in nodes):
        problems.append(f"no node has {_fmt(res.cpus_per_worker)} CPUs and {_fmt(res.gpus_per_worker)} GPUs "
                        "for one Train worker")
    return problems


def cluster_nodes() -> list[Node]:
    """The alive nodes of the connected Ray cluster (total resources, not what is free now)."""
    import ray

    return [Node(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
            for n in ray.nodes() if n.get("Alive")]


__all__ = ["DRIVER_CPUS", "Node", "cluster_nodes", "unmet"]
