"""The operator–trainer contract: exit codes, environment and file locations, storage
locations, the launch command and the progress document.

Both sides import this package; it must stay free of torch and kubernetes imports.
"""

from kubetune.contract.exit_codes import ExitCode, classify_exit_code
from kubetune.contract.launch import StaticRendezvous, launch_command, torchrun_args
from kubetune.contract.paths import TrainerPaths
from kubetune.contract.progress import ProgressDocument
from kubetune.contract.uris import Scheme, StorageUri, parse_uri

__all__ = [
    "ExitCode",
    "ProgressDocument",
    "Scheme",
    "StaticRendezvous",
    "StorageUri",
    "TrainerPaths",
    "classify_exit_code",
    "launch_command",
    "parse_uri",
    "torchrun_args",
]
