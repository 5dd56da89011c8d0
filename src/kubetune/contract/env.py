"""Every environment variable the operator (or ``kubetune run --local``) sets and the
trainer reads, by name: one spelling for both sides of the boundary."""

from __future__ import annotations

# Set by the operator in every trainer container.
CONFIG_ENV = "KUBETUNE_CONFIG"
OUTPUT_ENV = "KUBETUNE_OUTPUT_DIR"
ATTEMPT_ENV = "KUBETUNE_ATTEMPT"
METRICS_PORT_ENV = "KUBETUNE_METRICS_PORT"
VALIDATE_ONLY_ENV = "KUBETUNE_VALIDATE_ONLY"
#: Where the operator mounts each PersistentVolumeClaim a job names: <root>/<claim>.
PVC_ROOT_ENV = "KUBETUNE_PVC_ROOT"

# Set by local runs and tests; the defaults suit a pod.
PROGRESS_ENV = "KUBETUNE_PROGRESS_FILE"
CACHE_ENV = "KUBETUNE_CACHE_DIR"
TERMINATION_LOG_ENV = "KUBETUNE_TERMINATION_LOG"
STOP_AFTER_STEP_ENV = "KUBETUNE_STOP_AFTER_STEP"
#: Baked into the trainer image; recorded in the lineage.
GIT_REVISION_ENV = "KUBETUNE_GIT_REVISION"
#: Set by the launcher for its ranks: where each records its exit code.
EXIT_DIR_ENV = "KUBETUNE_EXIT_DIR"
#: Directory holding the approved-digest allow-list (spec.dataset.provenance.allowListRef):
#: the validation pod mounts the ConfigMap there; tests and local runs point it elsewhere.
PROVENANCE_DIR_ENV = "KUBETUNE_PROVENANCE_DIR"

# Well-known variables the contract relies on.
HF_OFFLINE_ENV = "HF_HUB_OFFLINE"
HF_HOME_ENV = "HF_HOME"
UNBUFFERED_ENV = "PYTHONUNBUFFERED"
#: Set by torchrun for every rank.
RANK_ENV = "RANK"
WORLD_SIZE_ENV = "WORLD_SIZE"
LOCAL_RANK_ENV = "LOCAL_RANK"
#: Read by boto3 (the endpoint also by the trainer itself, for S3-compatible stores).
AWS_ENDPOINT_URL_ENV = "AWS_ENDPOINT_URL"
#: Keys of the credentials Secret (documented on ``credentialsSecretRef``), each becoming
#: the trainer variable of the same name, and whether it may be missing.
S3_CREDENTIAL_ENV: tuple[tuple[str, bool], ...] = (
    ("AWS_ACCESS_KEY_ID", False),
    ("AWS_SECRET_ACCESS_KEY", False),
    ("AWS_SESSION_TOKEN", True),
    (AWS_ENDPOINT_URL_ENV, True),
    ("AWS_DEFAULT_REGION", True),
)

# -- names a job's spec.env may not set ----------------------------------------------------------
#: Prefixes of variables only the operator (or torchrun) sets: the contract's own variables,
#: torchrun's ``PET_*`` (each torchrun flag can be given as ``PET_<FLAG>``, so a user's
#: ``PET_NNODES`` or ``PET_MASTER_ADDR`` would redirect the rendezvous) and torchelastic's.
RESERVED_ENV_PREFIXES: tuple[str, ...] = ("KUBETUNE_", "PET_", "TORCHELASTIC_")
#: Variables torchrun sets for every rank from the operator's static rendezvous, plus the
#: non-prefixed ones the operator sets itself (set last, so they win anyway; refusing them
#: says so at apply time instead of silently ignoring the user's value).
RESERVED_ENV_NAMES: tuple[str, ...] = (
    "MASTER_ADDR",
    "MASTER_PORT",
    RANK_ENV,
    WORLD_SIZE_ENV,
    LOCAL_RANK_ENV,
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_NAME",
    "ROLE_WORLD_SIZE",
    HF_OFFLINE_ENV,
    UNBUFFERED_ENV,
)


def reserved_env_name(name: str) -> bool:
    """May ``spec.env`` not set ``name`` (the operator or torchrun sets it)?"""
    return name.startswith(RESERVED_ENV_PREFIXES) or name in RESERVED_ENV_NAMES
