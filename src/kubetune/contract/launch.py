"""How a trainer gang is started: the modules and the one torchrun argv builder.

Rendezvous: torchrun's *static* backend (``--node-rank`` + ``--master-addr`` of the
rank-0 pod). The operator always restarts the whole gang and the gang size is fixed,
so c10d's elasticity buys nothing, while static ranks guarantee that the pod labelled
rank 0 IS global rank 0 -- the one that serves the progress document and writes
checkpoints. ``--rdzv-id <uid>-<attempt>`` keeps a straggler of an old attempt out of
the new one's store. A local run (one machine) uses ``--standalone`` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: One trainer process (``python -m kubetune_trainer``).
TRAINER_MODULE = "kubetune_trainer"
#: torchrun with the contract's exit codes (``python -m kubetune_trainer.launch``).
LAUNCH_MODULE = "kubetune_trainer.launch"
TORCHRUN_MODULE = "torch.distributed.run"


@dataclass(frozen=True)
class StaticRendezvous:
    """Where the ranks of a multi-node gang meet: rank 0's address."""

    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int
    run_id: str
    timeout_seconds: int


def torchrun_args(
    nproc_per_node: int,
    rendezvous: StaticRendezvous | None = None,
    trainer_args: Sequence[str] = (),
) -> list[str]:
    """torchrun's arguments for ``nproc_per_node`` trainers on this node: static
    rendezvous in a cluster, standalone (one node) without ``rendezvous``.

    ``--max-restarts=0``: restarting the whole gang is the operator's job.
    """
    if rendezvous is None:
        placement = [f"--nproc-per-node={nproc_per_node}", "--standalone"]
    else:
        r = rendezvous
        placement = [
            f"--nnodes={r.nnodes}",
            f"--nproc-per-node={nproc_per_node}",
            f"--node-rank={r.node_rank}",
            "--rdzv-backend=static",
            f"--rdzv-id={r.run_id}",
            f"--master-addr={r.master_addr}",
            f"--master-port={r.master_port}",
            f"--rdzv-conf=timeout={r.timeout_seconds}",
        ]
    return [*placement, "--max-restarts=0", "-m", TRAINER_MODULE, *trainer_args]


def launch_command(
    nproc_per_node: int,
    rendezvous: StaticRendezvous | None = None,
    trainer_args: Sequence[str] = (),
    *,
    python: str = "python",
) -> list[str]:
    """``python -m kubetune_trainer.launch <torchrun args>``: the trainer container's
    command, and the local run's.

    The launcher is a drop-in for ``torchrun`` that passes the arguments on verbatim:
    torchrun alone exits 1 for any failed worker, the launcher exits with the most
    meaningful code a rank recorded, so the operator can tell bad data (permanent) from
    preemption (retryable).
    """
    return [python, "-m", LAUNCH_MODULE, *torchrun_args(nproc_per_node, rendezvous, trainer_args)]
