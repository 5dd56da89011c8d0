"""Where the base model and the dataset come from."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from kubetune.api.base import ApiModel, cel, validations
from kubetune.api.common import LOCATION_HELP, DNSSubdomain, Location, SecretReference
from kubetune.api.methods import DatasetFormat

ColumnName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
ConfigMapKey = Annotated[
    str, StringConstraints(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
]


class ModelSource(ApiModel):
    """The base model to fine-tune, in Hugging Face format (safetensors)."""

    uri: Location = Field(description="Location of the base model. " + LOCATION_HELP)
    revision: Annotated[str, StringConstraints(max_length=128)] | None = Field(
        default=None,
        description="Revision (branch, tag or commit) of an hf:// model in the cache/mirror.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Dtype to load the weights in; auto picks bfloat16 on GPUs that support "
        "it and float32 on CPU.",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow Python code shipped with the model to run. Off by default: it "
        "executes third-party code inside the training pods.",
    )
    credentials_secret_ref: SecretReference | None = Field(
        default=None,
        description="Secret with storage credentials (for s3:// locations): keys "
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and optionally AWS_ENDPOINT_URL.",
    )


class FieldMapping(ApiModel):
    """Column names in the dataset when they differ from the format's defaults."""

    messages: ColumnName | None = Field(
        default=None, description="Column with the chat messages (format chat). Default messages."
    )
    prompt: ColumnName | None = Field(
        default=None,
        description="Column with the prompt (formats promptCompletion, preference, unpaired, "
        "promptOnly). "
        "Default prompt.",
    )
    completion: ColumnName | None = Field(
        default=None,
        description="Column with the completion (formats promptCompletion, unpaired). Default "
        "completion.",
    )
    text: ColumnName | None = Field(
        default=None, description="Column with the text (format text). Default text."
    )
    chosen: ColumnName | None = Field(
        default=None,
        description="Column with the preferred answer (format preference). Default chosen.",
    )
    rejected: ColumnName | None = Field(
        default=None,
        description="Column with the dispreferred answer (format preference). Default rejected.",
    )
    answer: ColumnName | None = Field(
        default=None,
        description="Column with the reference answer a verifiable reward checks (format "
        "promptOnly; optional). Default answer.",
    )
    label: ColumnName | None = Field(
        default=None,
        description="Column with true (desirable) or false (undesirable) (format unpaired). "
        "Default label.",
    )
    images: ColumnName | None = Field(
        default=None,
        description="Column with the row's images (format visionChat; optional): a list of "
        "image bytes or paths, used in order by the image parts that name no image. "
        "Default images.",
    )


class AllowListReference(ApiModel):
    """A ConfigMap in the job's namespace that lists approved input digests."""

    name: DNSSubdomain = Field(description="Name of the ConfigMap in the job's namespace.")
    key: ConfigMapKey | None = Field(
        default=None,
        description="Key of the ConfigMap holding the list (YAML {approved: [{sha256, name, "
        "note}]}, a bare list of digests, or sha256sum output). Default approved.yaml.",
    )


class DatasetProvenance(ApiModel):
    """Approved provenance: the job's data inputs must be on a platform team's digest
    allow-list (see docs/provenance.md)."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "!(has(self.requireApproved) && self.requireApproved) || has(self.allowListRef)",
                "requireApproved needs allowListRef (the ConfigMap of approved digests)",
                field_path=".allowListRef",
            ),
        )
    }

    require_approved: bool = Field(
        default=False,
        description="Refuse the job, before any GPU is requested, when the sha256 of a data "
        "input (train, eval, continual tasks' data, evaluation sets; a directory's digest for "
        "a directory) is not on the allow-list. Without it the list is only recorded against "
        "(lineage.json says which inputs are approved).",
    )
    allow_list_ref: AllowListReference | None = Field(
        default=None,
        description="The ConfigMap of approved sha256 digests (kubetune provenance approve "
        "writes one). It is mounted into the validation pod only; the operator never reads it.",
    )


class DatasetSpec(ApiModel):
    """Training data: JSONL, Parquet or a saved Hugging Face dataset directory."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "!(has(self.eval) && has(self.evalSplit))",
                "set either eval (a separate evaluation set) or evalSplit (a fraction of "
                "train held out), not both",
                field_path=".evalSplit",
            ),
            cel(
                "!(self.format in ['preference', 'unpaired', 'promptOnly'] && "
                "has(self.packing) && self.packing)",
                "packing is not available for the preference, unpaired and promptOnly formats",
                field_path=".packing",
            ),
            cel(
                "!(self.format == 'visionChat' && has(self.packing) && self.packing)",
                "packing is not available for the visionChat format (each row carries images)",
                field_path=".packing",
            ),
        )
    }

    train: Location = Field(description="Location of the training data. " + LOCATION_HELP)
    eval: Location | None = Field(
        default=None,
        description="Location of a separate evaluation set. Without it, evalSplit of train "
        "is held out (default 0.05).",
    )
    format: DatasetFormat = Field(
        description="Row format: chat (a list of role/content messages), promptCompletion "
        "(prompt and completion strings), text (plain text for continued pre-training), "
        "preference (prompt, chosen and rejected: reward models, DPO, ORPO, KTO), unpaired "
        "(prompt, completion and a true/false label: KTO), promptOnly (prompts, optionally "
        "with a reference answer: PPO, GRPO, RLOO), visionChat (chat messages whose content "
        "holds image and text parts: vision-language models, methods full and lora)."
    )
    field_mapping: FieldMapping | None = Field(
        default=None, description="Column names, when they differ from the format's defaults."
    )
    eval_split: float | None = Field(
        default=None,
        ge=0.0,
        le=0.5,
        description="Fraction of train held out for evaluation when eval is not set "
        "(0 disables evaluation). Default 0.05.",
    )
    max_seq_length: int = Field(
        default=2048,
        ge=16,
        le=131072,
        description="Maximum tokens per sample; longer samples are truncated and counted.",
    )
    packing: bool | None = Field(
        default=None,
        description="Pack several samples into one sequence without cross-sample attention "
        "(padding-free batching). Default true for methods full, lora, qlora and adapter; "
        "not available for prefix/prompt tuning, reward models and preference data.",
    )
    completion_only_loss: bool = Field(
        default=True,
        description="Compute the loss only on completion/assistant tokens, not on prompts.",
    )
    skip_invalid_rows: bool = Field(
        default=False,
        description="Skip malformed rows (and count them in metrics and the model card) "
        "instead of failing the job before training.",
    )
    credentials_secret_ref: SecretReference | None = Field(
        default=None, description="Secret with storage credentials for s3:// locations."
    )
    provenance: DatasetProvenance | None = Field(
        default=None,
        description="Approved data provenance: an allow-list of input digests the job's "
        "data must be on (a profile can set it for a team).",
    )
