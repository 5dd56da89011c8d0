"""Small reusable API types: locations, references, quantities, tolerations."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from kubetune.api.base import ApiModel, cel, validations

# RE2/Python-compatible; also used verbatim as the CRD ``pattern``.
LOCATION_PATTERN = (
    r"^(pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^\s]*)?"
    r"|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?"
    r"|file:///[^\s]*"
    r"|/[^\s]*"
    r"|hf://[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?)$"
)
LOCATION_HELP = (
    "One of pvc://<claim>/<path> (a PersistentVolumeClaim in the job's namespace), "
    "s3://<bucket>/<prefix> (an S3-compatible store), an absolute path inside the "
    "trainer image (/models/x or file:///models/x), or hf://<org>/<name> (a hub id "
    "resolved only from the pre-populated cache or mirror; never downloaded)."
)
OUTPUT_PATTERN = (
    r"^(pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^\s]*)?"
    r"|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?"
    r"|file:///[^\s]*|/[^\s]*)$"
)

Location = Annotated[
    str, StringConstraints(min_length=2, max_length=1024, pattern=LOCATION_PATTERN)
]
OutputLocation = Annotated[
    str, StringConstraints(min_length=2, max_length=1024, pattern=OUTPUT_PATTERN)
]
DNSLabel = Annotated[
    str,
    StringConstraints(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
]
DNSSubdomain = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    ),
]
QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e[0-9]+)?$"
Quantity = Annotated[str, StringConstraints(max_length=64, pattern=QUANTITY_PATTERN)]
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LabelValue = Annotated[str, StringConstraints(max_length=63)]


class SecretReference(ApiModel):
    """A Secret in the job's namespace. Credentials are only ever passed by reference."""

    name: DNSSubdomain = Field(description="Name of the Secret in the job's namespace.")


class SecretKeySelector(ApiModel):
    """One key of a Secret in the job's namespace."""

    name: DNSSubdomain = Field(description="Name of the Secret.")
    key: Annotated[str, StringConstraints(min_length=1, max_length=253)] = Field(
        description="Key within the Secret."
    )
    optional: bool = Field(default=False, description="Allow the Secret or key to be missing.")


class ConfigMapKeySelector(ApiModel):
    """One key of a ConfigMap in the job's namespace."""

    name: DNSSubdomain = Field(description="Name of the ConfigMap.")
    key: Annotated[str, StringConstraints(min_length=1, max_length=253)] = Field(
        description="Key within the ConfigMap."
    )
    optional: bool = Field(default=False, description="Allow the ConfigMap or key to be missing.")


class EnvVarSource(ApiModel):
    """Where an environment variable's value comes from."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "has(self.secretKeyRef) != has(self.configMapKeyRef)",
                "exactly one of secretKeyRef or configMapKeyRef must be set",
            )
        )
    }

    secret_key_ref: SecretKeySelector | None = Field(
        default=None, description="Take the value from a key of a Secret."
    )
    config_map_key_ref: ConfigMapKeySelector | None = Field(
        default=None, description="Take the value from a key of a ConfigMap."
    )


SECRET_NAME_REGEX = (
    r"(?i).*(token|secret|password|passwd|credential|api_?key|access_?key|private_?key).*"
)


class EnvVar(ApiModel):
    """An extra environment variable for the trainer containers."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "!(has(self.value) && has(self.valueFrom))",
                "set value or valueFrom, not both",
            ),
            cel(
                f"!has(self.value) || !self.name.matches('{SECRET_NAME_REGEX}')",
                "this variable looks like a credential: pass it with "
                "valueFrom.secretKeyRef, never inline",
                field_path=".value",
            ),
        )
    }

    name: Annotated[
        str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    ] = Field(description="Variable name.")
    value: Annotated[str, StringConstraints(max_length=4096)] | None = Field(
        default=None,
        description="Literal value. Refused for names that look like credentials.",
    )
    value_from: EnvVarSource | None = Field(
        default=None, description="Take the value from a Secret or ConfigMap key."
    )


class Toleration(ApiModel):
    """A Kubernetes toleration applied to the training pods."""

    key: Annotated[str, StringConstraints(max_length=317)] | None = Field(
        default=None, description="Taint key the toleration applies to; empty matches all keys."
    )
    operator: Literal["Exists", "Equal"] = Field(
        default="Equal", description="Exists matches any value; Equal matches `value`."
    )
    value: Annotated[str, StringConstraints(max_length=63)] | None = Field(
        default=None, description="Taint value to match with operator Equal."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None,
        ge=0,
        description="For NoExecute: how long the pod stays bound after the taint appears.",
    )


class LocalObjectReference(ApiModel):
    """A reference to an object in the same namespace by name."""

    name: DNSSubdomain = Field(description="Name of the referent.")
