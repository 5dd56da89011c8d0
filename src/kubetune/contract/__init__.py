"""The operator–trainer contract: exit codes, file locations and the progress document.

Both sides import this package; it must stay free of torch and kubernetes imports.
"""

from kubetune.contract.exit_codes import ExitCode, classify_exit_code
from kubetune.contract.paths import TrainerPaths
from kubetune.contract.progress import ProgressDocument

__all__ = ["ExitCode", "ProgressDocument", "TrainerPaths", "classify_exit_code"]
