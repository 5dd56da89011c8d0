"""The kubetune operator: runs FineTuneJobs as gangs of torchrun pods (kopf).

Layout: pure decision and rendering logic (``lifecycle``, ``render``, ``failures``,
``gang``, ``progress``, ``status``) that unit tests cover without a cluster, and a thin
runtime (``kube``, ``controller``, ``leader``, ``handlers``, ``metrics``, ``runner``) that
executes the decisions against the API server.
"""

__version__ = "0.1.0"
