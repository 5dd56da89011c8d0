"""``python -m kubetune.devcluster.nodeagent``: run the node agent until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from kubetune.devcluster.nodeagent.agent import Agent
from kubetune.devcluster.nodeagent.config import AgentConfig


def parse(argv: list[str] | None = None) -> AgentConfig:
    p = argparse.ArgumentParser(prog="python -m kubetune.devcluster.nodeagent", description=__doc__)
    p.add_argument("--kubeconfig", type=Path, required=True)
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--gpus", type=int, default=2, help="nvidia.com/gpu per node")
    p.add_argument("--cpu", default="8")
    p.add_argument("--memory", default="32Gi")
    p.add_argument("--heartbeat-seconds", type=float, default=10.0)
    a = p.parse_args(argv)
    return AgentConfig(
        kubeconfig=a.kubeconfig,
        state_dir=a.state_dir.absolute(),
        nodes=a.nodes,
        gpus=a.gpus,
        cpu=a.cpu,
        memory=a.memory,
        heartbeat_seconds=a.heartbeat_seconds,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(threadName)s %(message)s",
    )
    agent = Agent(parse(argv))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        agent.start()
        print("node agent ready", file=sys.stderr, flush=True)
        stop.wait()
    finally:
        agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
