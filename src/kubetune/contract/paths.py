"""Where the operator puts things for the trainer, and where the trainer writes back."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kubetune.contract.env import CONFIG_ENV, METRICS_PORT_ENV, OUTPUT_ENV, PROGRESS_ENV

#: Where the operator mounts each PersistentVolumeClaim a job names: <root>/<claim>.
DEFAULT_PVC_ROOT = Path("/mnt/pvc")
TERMINATION_LOG = Path("/dev/termination-log")

DEFAULT_CONFIG_PATH = Path("/etc/kubetune/job.json")
DEFAULT_METRICS_PORT = 9400
PROGRESS_PORT_PATH = "/progress"


@dataclass(frozen=True)
class TrainerPaths:
    """Resolved file locations for one trainer process."""

    config: Path
    output_dir: Path
    progress_file: Path
    metrics_port: int

    @classmethod
    def from_env(cls, output_dir: Path | None = None) -> TrainerPaths:
        out = Path(os.environ.get(OUTPUT_ENV, str(output_dir or "/workspace/output")))
        return cls(
            config=Path(os.environ.get(CONFIG_ENV, str(DEFAULT_CONFIG_PATH))),
            output_dir=out,
            progress_file=Path(os.environ.get(PROGRESS_ENV, str(out / "progress.json"))),
            metrics_port=int(os.environ.get(METRICS_PORT_ENV, DEFAULT_METRICS_PORT)),
        )

    @property
    def checkpoints_dir(self) -> Path:
        return self.output_dir / "checkpoints"
