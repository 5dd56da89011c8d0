"""Pure functions that turn a FineTuneJob into the Kubernetes objects that run it.

Nothing here talks to the API: every function takes the job (and the operator settings)
and returns plain dicts, so the exact manifests are unit-tested.
"""

from kubetune_operator.render.configmap import render_config_map
from kubetune_operator.render.pods import render_worker_pod, torchrun_command
from kubetune_operator.render.service import render_service
from kubetune_operator.render.validation_pod import render_validation_pod

__all__ = [
    "render_config_map",
    "render_service",
    "render_validation_pod",
    "render_worker_pod",
    "torchrun_command",
]
