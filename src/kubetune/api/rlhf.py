"""RLHF settings: preference methods (DPO, KTO, ORPO) and online RL (PPO, GRPO, RLOO).

The online methods share four blocks, because they share one loop: ``reward`` (what pays
the policy: a reward model or a verifiable check of the answer), ``generation`` (how
rollouts are sampled), ``kl`` (the penalty that keeps the policy near the reference) and
``guards`` (what stops or flags reward hacking). Only the update rule differs, and it has a
block per method (``ppo``, ``grpo``, ``rloo``). Names follow the field (TRL, OpenRLHF).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from kubetune.api.base import ApiModel, cel, validations
from kubetune.api.common import Location

# Python's re has no timeout: bounding the pattern is the API's share of keeping a
# catastrophic pattern cheap (the trainer also bounds the text it runs on).
RegexPattern = Annotated[str, StringConstraints(min_length=1, max_length=512)]
KeyName = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class DpoSettings(ApiModel):
    """Direct preference optimisation."""

    beta: float = Field(
        default=0.1, gt=0.0, le=10.0, description="Strength of the KL penalty to the reference."
    )
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field(
        default="sigmoid", description="Preference loss."
    )
    reference_model: Location | None = Field(
        default=None,
        description="Reference policy; default: the base model (with LoRA: the base under "
        "the adapter, no second copy).",
    )


class VerifiableReward(ApiModel):
    """A reward computed from the response by a fixed check (no user code runs)."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.check != 'regex' || has(self.pattern)",
                "check regex needs pattern",
                field_path=".pattern",
            ),
        )
    }

    check: Literal["exactMatch", "regex", "validJson", "numeric"] = Field(
        description="exactMatch: the response equals the row's reference answer (whitespace "
        "and case normalised); regex: pattern is found in the response; validJson: the "
        "response is a JSON object with requiredKeys; numeric: the last number of the "
        "response equals the reference's within tolerance."
    )
    pattern: RegexPattern | None = Field(
        default=None, description="Regular expression (check regex), Python syntax."
    )
    full_match: bool = Field(
        default=False, description="check regex: the pattern must match the whole response."
    )
    required_keys: list[KeyName] = Field(
        default_factory=list, max_length=64, description="check validJson: keys that must exist."
    )
    tolerance: float = Field(
        default=1e-6, ge=0.0, le=1e6, description="check numeric: allowed difference."
    )
    relative: bool = Field(
        default=False, description="check numeric: tolerance is relative to the magnitude."
    )


class RewardSpec(ApiModel):
    """What pays the policy in PPO, GRPO and RLOO, and how scores are shaped."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "has(self.model) != has(self.verifiable)",
                "set exactly one of reward.model and reward.verifiable",
                field_path=".model",
            ),
            cel(
                "self.lengthPenalty == 0.0 || has(self.targetLength)",
                "lengthPenalty needs targetLength",
                field_path=".targetLength",
            ),
        )
    }

    model: Location | None = Field(
        default=None, description="A reward model (the output of a method reward job)."
    )
    verifiable: VerifiableReward | None = Field(
        default=None, description="A fixed check of the answer against the row's reference."
    )
    normalize: bool = Field(
        default=False,
        description="Standardise scores with their running mean and std (reward models "
        "drift in scale; verifiable 0/1 rewards rarely need it).",
    )
    clip: float | None = Field(
        default=None, gt=0.0, le=1e4, description="Clip (shaped) scores to +-clip."
    )
    missing_eos_penalty: float | None = Field(
        default=None,
        ge=0.0,
        le=1e4,
        description="Subtracted from responses cut by maxNewTokens before ending, so "
        "rambling scores below a finished answer.",
    )
    length_penalty: float = Field(
        default=0.0, ge=0.0, le=100.0, description="Subtracted per token beyond targetLength."
    )
    target_length: int | None = Field(
        default=None, ge=1, le=65536, description="Response length free of lengthPenalty."
    )


class GenerationSpec(ApiModel):
    """How rollouts are sampled from the policy (with a KV cache, in batches)."""

    max_new_tokens: int = Field(default=64, ge=1, le=8192, description="Response length cap.")
    temperature: float = Field(
        default=1.0, gt=0.0, le=10.0, description="Sampling temperature (also of the losses)."
    )
    top_k: int = Field(default=0, ge=0, le=100000, description="Top-k sampling; 0 is off.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling; 1 is off.")
    samples_per_prompt: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Responses per prompt: the group of GRPO and RLOO (at least 2; default "
        "4), 1 for PPO by default.",
    )


class AdaptiveKl(ApiModel):
    """Ziegler et al.'s controller: the coefficient follows the measured KL to a target."""

    target: float = Field(default=6.0, gt=0.0, le=1e4, description="KL to aim for (nats).")
    horizon: float = Field(
        default=10000.0, gt=0.0, le=1e9, description="Samples over which to reach it."
    )


class KlSpec(ApiModel):
    """The penalty that keeps the policy near the frozen reference."""

    coefficient: float | None = Field(
        default=None,
        ge=0.0,
        le=10.0,
        description="KL weight (initial value with adaptive). Default 0.05 for PPO and "
        "RLOO (a per-token penalty in the reward), 0.04 for GRPO (a term of the loss).",
    )
    estimator: Literal["k1", "k3"] | None = Field(
        default=None,
        description="Per-token KL estimator: k1 = log(p/ref) (PPO, RLOO default), k3 = "
        "(r-1) - log r, unbiased and never negative (GRPO default).",
    )
    adaptive: AdaptiveKl | None = Field(
        default=None, description="Adapt the coefficient to a target KL (PPO and RLOO)."
    )


class GuardSpec(ApiModel):
    """Guards against reward hacking. The KL ceiling stops the run; the others warn."""

    kl_ceiling: float | None = Field(
        default=30.0,
        gt=0.0,
        le=1e6,
        description="Stop the run (permanent failure) when the mean KL to the reference "
        "per response stays above this for klCeilingSteps steps. Unset disables.",
    )
    kl_ceiling_steps: int = Field(default=3, ge=1, le=10000, description="Steps above the ceiling.")
    length_drift_ratio: float | None = Field(
        default=2.0,
        gt=1.0,
        le=100.0,
        description="Warn when the mean response length leaves [baseline/ratio, "
        "baseline*ratio] for lengthDriftSteps steps; the baseline is the mean of the first "
        "lengthBaselineSteps steps. Unset disables.",
    )
    length_baseline_steps: int = Field(default=3, ge=1, le=10000, description="Baseline steps.")
    length_drift_steps: int = Field(default=2, ge=1, le=10000, description="Steps out of range.")
    held_out_reward_model: Location | None = Field(
        default=None,
        description="An independent reward model scoring the same responses; warn when the "
        "training reward rises while its score falls over divergenceWindow steps.",
    )
    divergence_window: int = Field(default=8, ge=3, le=10000, description="Steps compared.")


class RolesSpec(ApiModel):
    """Where the models of online RL run. Colocated: every training process holds the
    policy, reference, reward and value models and generates with its own policy replica.
    Separate pod-sets per role (a generation server, a reward server) are future values."""

    placement: Literal["colocated"] = Field(
        default="colocated",
        description="colocated (the only placement of this version): all roles in the gang.",
    )


class PpoSettings(ApiModel):
    """Proximal policy optimisation with a value model and GAE."""

    epochs: int = Field(
        default=4, ge=1, le=64, description="Passes over each batch of rollouts (ppoEpochs)."
    )
    mini_batches: int = Field(
        default=1, ge=1, le=1024, description="Optimizer steps per pass (numMiniBatches)."
    )
    clip_range: float = Field(default=0.2, gt=0.0, le=10.0, description="Policy ratio clip.")
    value_clip_range: float = Field(default=0.2, gt=0.0, le=1e4, description="Value clip.")
    value_learning_rate: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="Learning rate of the value model, which has its own optimizer (a loss "
        "weight would do nothing under Adam). Default: 10x learningRate.",
    )
    gamma: float = Field(default=1.0, ge=0.0, le=1.0, description="Discount factor.")
    lam: float = Field(default=0.95, ge=0.0, le=1.0, description="GAE lambda.")
    whiten_advantages: bool = Field(default=True, description="Standardise advantages.")
    target_kl: float | None = Field(
        default=None,
        gt=0.0,
        le=1e4,
        description="Stop a batch's remaining passes once the approximate KL between the "
        "new and the sampling policy exceeds 1.5x this.",
    )
    ratio_threshold: float = Field(
        default=10.0,
        gt=1.0,
        le=1e6,
        description="Skip a mini-batch whose mean probability ratio exceeds this.",
    )
    value_model: Location | None = Field(
        default=None,
        description="Initial value model; default: the reward model (reward.model), or the "
        "base model with a fresh head for a verifiable reward.",
    )


class GroupSettings(ApiModel):
    """GRPO and RLOO: the group of samples of one prompt is the baseline, no value model."""

    epochs: int = Field(default=1, ge=1, le=64, description="Passes over each batch of rollouts.")
    clip_range: float = Field(default=0.2, gt=0.0, le=10.0, description="Policy ratio clip.")
    scale_rewards: bool = Field(
        default=True, description="GRPO: divide advantages by the group's std."
    )


class KtoSettings(ApiModel):
    """Kahneman-Tversky optimisation on unpaired desirable/undesirable examples."""

    beta: float = Field(default=0.1, gt=0.0, le=10.0, description="KL penalty strength.")
    desirable_weight: float = Field(
        default=1.0, gt=0.0, le=100.0, description="Weight of desirable examples."
    )
    undesirable_weight: float = Field(
        default=1.0, gt=0.0, le=100.0, description="Weight of undesirable examples."
    )


class OrpoSettings(ApiModel):
    """Odds-ratio preference optimisation: SFT and preference in one stage, no reference."""

    beta: float = Field(
        default=0.1, gt=0.0, le=10.0, description="Weight of the odds-ratio term (lambda)."
    )


class RlhfSpec(ApiModel):
    """Settings of the RLHF methods; only the blocks the chosen method takes apply."""

    dpo: DpoSettings | None = Field(default=None, description="DPO settings.")
    kto: KtoSettings | None = Field(default=None, description="KTO settings.")
    orpo: OrpoSettings | None = Field(default=None, description="ORPO settings.")
    reward: RewardSpec | None = Field(
        default=None, description="Reward of PPO, GRPO and RLOO (required for them)."
    )
    generation: GenerationSpec | None = Field(default=None, description="Rollout sampling.")
    kl: KlSpec | None = Field(default=None, description="KL penalty to the reference.")
    guards: GuardSpec | None = Field(default=None, description="Reward-hacking guards.")
    roles: RolesSpec | None = Field(default=None, description="Where the RL models run.")
    ppo: PpoSettings | None = Field(default=None, description="PPO settings.")
    grpo: GroupSettings | None = Field(default=None, description="GRPO settings.")
    rloo: GroupSettings | None = Field(default=None, description="RLOO settings.")
