"""The gang of one attempt: who exists, who is placed, who runs, and the restart backoff."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kubetune_operator.observed import PodView


def backoff_seconds(restart: int, base: float, cap: float) -> float:
    """Delay before restart number ``restart`` (1-based): ``base * 2^(restart-1)``, capped."""
    if restart <= 0:
        return 0.0
    return float(min(cap, base * (2 ** min(restart - 1, 30))))


@dataclass(frozen=True)
class GangState:
    """Placement and progress of the pods of one attempt."""

    size: int
    by_rank: dict[int, PodView]

    @classmethod
    def of(cls, pods: Sequence[PodView], size: int) -> GangState:
        by_rank: dict[int, PodView] = {}
        for pod in pods:
            if pod.rank is not None:
                by_rank[pod.rank] = pod
        return cls(size, by_rank)

    @property
    def pods(self) -> list[PodView]:
        return [self.by_rank[r] for r in sorted(self.by_rank)]

    @property
    def missing(self) -> list[int]:
        return [r for r in range(self.size) if r not in self.by_rank]

    @property
    def extra(self) -> list[PodView]:
        """Pods with ranks outside the gang (left over from a differently sized gang)."""
        return [p for r, p in self.by_rank.items() if r >= self.size]

    @property
    def gated(self) -> list[PodView]:
        return [p for p in self.pods if p.gated]

    @property
    def ever_released(self) -> bool:
        """Some pod lost its gang gate, so the whole gang existed at some point."""
        return any(not p.gated for p in self.pods)

    @property
    def foreign_gates(self) -> set[str]:
        return {g for p in self.pods for g in p.foreign_gates}

    @property
    def bound(self) -> int:
        return sum(1 for p in self.pods if p.bound)

    @property
    def running(self) -> int:
        return sum(1 for p in self.pods if p.phase == "Running" and not p.deleting)

    @property
    def succeeded(self) -> int:
        return sum(1 for p in self.pods if p.phase == "Succeeded")

    def rank0(self) -> PodView | None:
        return self.by_rank.get(0)

    def scheduler_message(self) -> str | None:
        """The scheduler's explanation for an unplaced pod (PodScheduled=False)."""
        for pod in self.pods:
            cond = pod.scheduled
            if not pod.bound and cond is not None and cond.status == "False" and cond.message:
                return cond.message
        return None

    def waiting_reasons(self) -> list[str]:
        """Why placed containers are not running yet (image pulls, config errors)."""
        out = []
        for pod in self.pods:
            if pod.waiting_reason and pod.waiting_reason not in ("ContainerCreating",):
                text = f"{pod.name}: {pod.waiting_reason}"
                if pod.waiting_message:
                    text += f" ({pod.waiting_message})"
                out.append(text)
        return out
