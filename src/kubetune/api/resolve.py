"""Turn a validated FineTuneJob into the document the trainer runs.

Every default is filled here, once, so the trainer never re-derives policy and the
operator can hash exactly what ran. The trainer reads ``ResolvedJob`` from the file the
operator mounts (``kubetune.contract.env.CONFIG_ENV``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field

from kubetune.api.base import ApiModel
from kubetune.api.defaults import DEFAULT_EVAL_SPLIT, DEFAULT_ZERO_STAGE
from kubetune.api.job import API_VERSION, FineTuneJob, FineTuneJobSpec
from kubetune.api.methods import METHOD_TRAITS, SFT_FORMATS
from kubetune.api.rlhf import (
    DpoSettings,
    GenerationSpec,
    GroupSettings,
    GuardSpec,
    KlSpec,
    KtoSettings,
    OrpoSettings,
    PpoSettings,
    RlhfSpec,
    RolesSpec,
)
from kubetune.api.training import (
    AdapterSettings,
    LoraSettings,
    PeftSpec,
    QuantizationSettings,
    VirtualTokenSettings,
)


class ResolutionError(ValueError):
    """The spec is valid on its own but cannot be run as asked."""


class Derived(ApiModel):
    """Values computed from the spec (and the place it runs)."""

    world_size: int = Field(ge=1, description="Training processes in the gang.")
    nproc_per_node: int = Field(ge=1, description="Processes per pod (torchrun).")
    nodes: int = Field(ge=1, description="Pods in the gang.")
    gradient_accumulation_steps: int = Field(ge=1, description="Micro-batches per step.")
    global_batch_size: int = Field(ge=1, description="Samples per optimizer step.")


class ResolvedJob(ApiModel):
    """The operator-to-trainer document: the spec with every default filled in.

    Frozen: the trainer reads it as is, it never re-derives or patches a value.
    """

    model_config = ApiModel.model_config | {"frozen": True}

    api_version: Literal["kubetune.io/v1alpha1"] = API_VERSION
    kind: Literal["ResolvedFineTuneJob"] = "ResolvedFineTuneJob"
    name: str = Field(description="FineTuneJob name.")
    namespace: str = Field(default="default", description="FineTuneJob namespace.")
    uid: str | None = Field(default=None, description="FineTuneJob UID.")
    attempt: int = Field(default=1, ge=1, description="Gang attempt (1 + restarts).")
    spec: FineTuneJobSpec
    derived: Derived

    def config_hash(self) -> str:
        """sha256 of what determines the result (not name, attempt or placement)."""
        canonical = json.dumps(
            self.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


# The default of each optional method block resolve() fills in (rlhf.reward has none:
# what pays the policy must be named).
_BLOCK_DEFAULTS: dict[str, type[ApiModel]] = {
    "peft.lora": LoraSettings,
    "peft.quantization": QuantizationSettings,
    "peft.prefix": VirtualTokenSettings,
    "peft.prompt": VirtualTokenSettings,
    "peft.adapter": AdapterSettings,
    "rlhf.dpo": DpoSettings,
    "rlhf.kto": KtoSettings,
    "rlhf.orpo": OrpoSettings,
    "rlhf.generation": GenerationSpec,
    "rlhf.kl": KlSpec,
    "rlhf.guards": GuardSpec,
    "rlhf.roles": RolesSpec,
    "rlhf.ppo": PpoSettings,
    "rlhf.grpo": GroupSettings,
    "rlhf.rloo": GroupSettings,
}

# Online RL defaults from practice: PPO samples once per prompt and penalises KL per token
# in the reward (k1, 0.05, as TRL's PPO and OpenRLHF); GRPO samples a group of 4 and puts
# k3 KL in the loss at 0.04 (the DeepSeekMath paper, TRL's GRPOTrainer); RLOO samples 4
# and penalises k1 KL in the reward at 0.05 (TRL's RLOOTrainer).
_RL_DEFAULTS: dict[str, tuple[int, float, str]] = {
    "ppo": (1, 0.05, "k1"),
    "grpo": (4, 0.04, "k3"),
    "rloo": (4, 0.05, "k1"),
}


def _fill_rl_defaults(spec: FineTuneJobSpec) -> None:
    if spec.method not in _RL_DEFAULTS or spec.rlhf is None:
        return
    samples, coefficient, estimator = _RL_DEFAULTS[spec.method]
    generation, kl = spec.rlhf.generation, spec.rlhf.kl
    assert generation is not None and kl is not None  # _fill_method_blocks
    if generation.samples_per_prompt is None:
        generation.samples_per_prompt = samples
    if kl.coefficient is None:
        kl.coefficient = coefficient
    if kl.estimator is None:
        kl.estimator = estimator  # type: ignore[assignment]


_PARENTS: dict[str, type[ApiModel]] = {"peft": PeftSpec, "rlhf": RlhfSpec}


def _fill_method_blocks(spec: FineTuneJobSpec) -> None:
    """Give the method every settings block it takes (``METHOD_TRAITS[...].blocks``)."""
    for block in METHOD_TRAITS[spec.method].blocks:
        if block not in _BLOCK_DEFAULTS:
            continue
        parent_name, _, name = block.partition(".")
        parent = getattr(spec, parent_name) or _PARENTS[parent_name]()
        if getattr(parent, name) is None:
            setattr(parent, name, _BLOCK_DEFAULTS[block]())
        setattr(spec, parent_name, parent)


def resolve(
    job: FineTuneJob,
    *,
    attempt: int = 1,
    nodes: int | None = None,
    nproc_per_node: int | None = None,
) -> ResolvedJob:
    """Fill defaults and derive gradient accumulation.

    ``nodes``/``nproc_per_node`` override the placement (``kubetune run --local`` runs
    a GPU manifest on CPU processes); the global batch is then kept when it divides and
    otherwise rounded to the nearest multiple, which the caller reports.
    """
    spec = job.spec.model_copy(deep=True)
    traits = METHOD_TRAITS[spec.method]
    hp = spec.hyperparameters
    if hp.learning_rate is None:
        hp.learning_rate = traits.learning_rate
    if hp.epochs is None and hp.max_steps is None:
        hp.epochs = traits.epochs
    if hp.weight_decay is None:
        hp.weight_decay = traits.weight_decay
    data = spec.dataset
    if data.eval is None and data.eval_split is None:
        data.eval_split = DEFAULT_EVAL_SPLIT
    if data.packing is None:
        data.packing = data.format in SFT_FORMATS and traits.packs
    if spec.distributed.strategy == "deepspeed" and spec.distributed.zero_stage is None:
        spec.distributed.zero_stage = DEFAULT_ZERO_STAGE
    _fill_method_blocks(spec)
    _fill_rl_defaults(spec)

    n_nodes = nodes if nodes is not None else spec.resources.nodes
    nproc = nproc_per_node if nproc_per_node is not None else spec.resources.gpus_per_node
    if n_nodes < 1 or nproc < 1:
        raise ResolutionError("the gang needs at least one process")
    world = n_nodes * nproc
    per_step = hp.micro_batch_size * world
    global_batch = hp.global_batch_size
    if global_batch % per_step:
        if nodes is None and nproc_per_node is None:
            raise ResolutionError(
                f"spec.hyperparameters.globalBatchSize {global_batch} is not a multiple of "
                f"microBatchSize x world size = {per_step}"
            )
        global_batch = max(per_step, round(global_batch / per_step) * per_step)
    return ResolvedJob(
        name=job.metadata.name or "local",
        namespace=job.metadata.namespace or "default",
        uid=job.metadata.uid,
        attempt=attempt,
        spec=spec,
        derived=Derived(
            world_size=world,
            nproc_per_node=nproc,
            nodes=n_nodes,
            gradient_accumulation_steps=global_batch // per_step,
            global_batch_size=global_batch,
        ),
    )
