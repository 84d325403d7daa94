"""How many GPUs a round holds at once, phase by phase, against how many GPUs a cluster file can scale to.

A round of the loop (``app/rounds/loop.py``) keeps some actors for the whole run: the vLLM generators (one
pool, swapped in place), the scorer actors of every scorer configuration once it was first used
(``keep_scorers``: the training scorer, and an eval judge that is a model), and the Serve replica. Others live
for one phase only: the reference pass's actors, then the Ray Train workers. So each phase needs

    rollout:         kept
    reference pass:  kept + reference actors (train.num_workers, precomputed reference only)
    training:        kept + training workers (train.num_workers)
    eval:            kept

GPUs at the same time, where ``kept`` counts an actor kind only in the phases where it is already alive. The
cluster can scale to the sum over its GPU node types of (most nodes of that type x GPUs per node), taking the
node types with most GPUs first when the file caps the number of nodes overall.

The check is a necessary condition: a phase that needs more GPUs than the cluster has cannot run (its actors
would wait for GPUs that never come, until ``resources.wait_timeout_s``). A phase that fits the count may
still not pack onto the nodes (custom-resource placement and per-node packing are not modelled here); each
actor's memory against the node types is ``core/plan.py``'s check.
"""

from __future__ import annotations

from dataclasses import dataclass

PHASES = ("rollout", "reference pass", "training", "eval")


@dataclass(frozen=True)
class Holder:
    """One kind of actor that holds GPUs: how many, GPUs each, the phases it is alive in, the recipe keys that
    set those numbers (what a user changes to make a phase fit)."""

    actor: str
    count: int
    gpus: float
    phases: tuple[str, ...]
    keys: tuple[str, ...]

    @property
    def total(self) -> float:
        return self.count * self.gpus

    def describe(self) -> str:
        return f"{self.actor} {self.count} x {self.gpus:g} ({', '.join(self.keys)})"


@dataclass(frozen=True)
class PhaseNeed:
    """The actors alive in one phase and the GPUs they hold together."""

    phase: str
    holders: tuple[Holder, ...]

    @property
    def gpus(self) -> float:
        return sum(h.total for h in self.holders)


def phase_needs(holders: list[Holder]) -> list[PhaseNeed]:
    """Per phase (in round order), the holders alive in it; phases nobody holds a GPU in are left out."""
    out = []
    for phase in PHASES:
        alive = tuple(h for h in holders if phase in h.phases and h.total > 0)
        if alive:
            out.append(PhaseNeed(phase, alive))
    return out


def scalable_gpus(node_types: list[tuple[int, int]], node_cap: int | None = None) -> int:
    """The most GPUs a cluster can hold at once. ``node_types``: (GPUs per node, most nodes of that type);
    ``node_cap``: the most GPU nodes overall (None: no overall cap), filled with the biggest nodes first."""
    per_node = sorted((gpus for gpus, most in node_types for _ in range(max(most, 0))), reverse=True)
    return sum(per_node if node_cap is None else per_node[:max(node_cap, 0)])


def count_shortfalls(needs: list[PhaseNeed], capacity: int, cluster: str) -> list[str]:
    """One sentence per phase that needs more GPUs at once than ``capacity``: the phase, the GPUs, each actor
    kind alive in it with the recipe keys that set its count."""
    errors = []
    for need in needs:
        if need.gpus > capacity + 1e-9:
            errors.append(f"{need.phase}: {need.gpus:g} GPUs at once, the cluster ({cluster}) scales to {capacity}: "
                          + "; ".join(h.describe() for h in need.holders)
                          + ". Lower these keys or add GPU nodes")
    return errors
