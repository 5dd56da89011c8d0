"""The one torchrun argv: static rendezvous at rank 0 in a cluster, standalone locally."""

from __future__ import annotations

import pytest

from kubetune.contract import StaticRendezvous, launch_command, torchrun_args
from kubetune.contract.launch import LAUNCH_MODULE, TRAINER_MODULE

RENDEZVOUS = StaticRendezvous(
    nnodes=4,
    node_rank=2,
    master_addr="tune-0.tune.team.svc",
    master_port=29400,
    run_id="uid-tune-3",
    timeout_seconds=900,
)


def test_cluster_command() -> None:
    assert launch_command(8, RENDEZVOUS) == [
        "python",
        "-m",
        LAUNCH_MODULE,
        "--nnodes=4",
        "--nproc-per-node=8",
        "--node-rank=2",
        "--rdzv-backend=static",
        "--rdzv-id=uid-tune-3",
        "--master-addr=tune-0.tune.team.svc",
        "--master-port=29400",
        "--rdzv-conf=timeout=900",
        "--max-restarts=0",
        "-m",
        TRAINER_MODULE,
    ]


def test_local_command() -> None:
    cmd = launch_command(2, trainer_args=["--validate-only"], python="/venv/bin/python")
    assert cmd == [
        "/venv/bin/python",
        "-m",
        "kubetune_trainer.launch",
        "--nproc-per-node=2",
        "--standalone",
        "--max-restarts=0",
        "-m",
        "kubetune_trainer",
        "--validate-only",
    ]
    assert torchrun_args(2, trainer_args=["--validate-only"]) == cmd[3:]


def test_torchrun_parses_both_variants() -> None:
    pytest.importorskip("torch")
    from torch.distributed.run import config_from_args, parse_args

    local = parse_args(torchrun_args(3, trainer_args=["--validate-only"]))
    config, _, args = config_from_args(local)
    assert local.standalone and (config.min_nodes, config.max_nodes) == (1, 1)
    assert config.nproc_per_node == 3 and config.max_restarts == 0
    assert args[-3:] == ["-m", "kubetune_trainer", "--validate-only"]

    config, _, args = config_from_args(parse_args(torchrun_args(8, RENDEZVOUS)))
    assert config.rdzv_backend == "static" and config.rdzv_endpoint == "tune-0.tune.team.svc:29400"
    assert (config.min_nodes, config.max_nodes, config.run_id) == (4, 4, "uid-tune-3")
    assert config.rdzv_configs == {"timeout": "900", "rank": 2}
    assert args[-2:] == ["-m", "kubetune_trainer"]
