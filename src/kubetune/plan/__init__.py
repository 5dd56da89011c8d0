"""``kubetune plan``: peak GPU memory and time per epoch of a FineTuneJob, before any GPU.

Pure Python (no torch): the CLI, the operator and the trainer's validation pod share it.
"""

from kubetune.plan.gpus import GPU_NAMES, GpuType, gpu_by_name, gpu_from_selector
from kubetune.plan.memory import MemoryEstimate, Part, estimate_memory
from kubetune.plan.setup import TrainingSetup, setup_from_job
from kubetune.plan.shape import ModelShape, ShapeError

__all__ = [
    "GPU_NAMES",
    "GpuType",
    "MemoryEstimate",
    "ModelShape",
    "Part",
    "ShapeError",
    "TrainingSetup",
    "estimate_memory",
    "gpu_by_name",
    "gpu_from_selector",
    "setup_from_job",
]
