"""The FineTuneJob API (kubetune.io/v1alpha1), defined once and imported everywhere."""

from kubetune.api.job import API_VERSION, GROUP, KIND, PLURAL, VERSION, FineTuneJob, FineTuneJobSpec
from kubetune.api.status import FineTuneJobStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
]
