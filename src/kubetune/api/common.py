"""Small reusable API types: locations, references, quantities, tolerations."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from kubetune.api.base import ApiModel, cel, validations
from kubetune.contract.env import RESERVED_ENV_NAMES, RESERVED_ENV_PREFIXES

# One path segment that is not ``..`` (RE2 has no look-ahead, so it is spelled out:
# empty, ``.``, anything not starting with a dot, a dot then a non-dot, or ``..`` plus
# more). A ``..`` segment would climb out of the claim or directory the location names.
_SEGMENT = r"([^\s/.][^\s/]*|\.[^\s/.][^\s/]*|\.\.[^\s/]+|\.)?"
_PATH = rf"(/{_SEGMENT})*"
_ABSOLUTE = rf"(/{_SEGMENT})+"
_PVC = r"pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?" + _PATH
_S3 = r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]" + _PATH
_FILE = rf"file://{_ABSOLUTE}|{_ABSOLUTE}"
_HF = r"hf://[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?"

# RE2/Python-compatible; also used verbatim as the CRD ``pattern``.
LOCATION_PATTERN = rf"^({_PVC}|{_S3}|{_FILE}|{_HF})$"
LOCATION_HELP = (
    "One of pvc://<claim>/<path> (a PersistentVolumeClaim in the job's namespace), "
    "s3://<bucket>/<prefix> (an S3-compatible store), an absolute path inside the "
    "trainer image (/models/x or file:///models/x), or hf://<org>/<name> (a hub id "
    "resolved only from the pre-populated cache or mirror; never downloaded). "
    "Paths may not contain '..' segments."
)
OUTPUT_PATTERN = rf"^({_PVC}|{_S3}|{_FILE})$"
#: What each location pattern means, in words with an example (for messages).
PATTERN_HELP = {
    LOCATION_PATTERN: "expected pvc://<claim>/<path>, s3://<bucket>/<prefix>, an absolute "
    "path (/models/x or file:///models/x) or hf://<org>/<name>, without '..' segments; "
    "e.g. pvc://models/llama-3-8b",
    OUTPUT_PATTERN: "expected pvc://<claim>/<path>, s3://<bucket>/<prefix> or an absolute "
    "path (/outputs/x or file:///outputs/x), without '..' segments; e.g. pvc://ckpt/my-job",
}

Location = Annotated[
    str, StringConstraints(min_length=2, max_length=1024, pattern=LOCATION_PATTERN)
]
OutputLocation = Annotated[
    str, StringConstraints(min_length=2, max_length=1024, pattern=OUTPUT_PATTERN)
]
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNSLabel = Annotated[
    str,
    StringConstraints(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN),
]
DNSSubdomain = Annotated[
    str,
    StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN),
]
QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e[0-9]+)?$"
Quantity = Annotated[str, StringConstraints(max_length=64, pattern=QUANTITY_PATTERN)]
# Inside a CEL string literal: ``\\.`` there is the regex ``\.``.
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
# The same qualified name ([prefix/]name) as a schema pattern (no CEL escaping).
QUALIFIED_NAME_PATTERN = LABEL_KEY_PATTERN.replace("\\\\.", "\\.")
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LabelValue = Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE_PATTERN)]

#: What each pattern means, in words with an example: messages never show a raw regex.
PATTERN_HELP.update(
    {
        DNS_LABEL_PATTERN: "expected a DNS label: at most 63 lower-case letters, digits "
        "and '-', starting and ending with a letter or digit; e.g. my-name",
        DNS_SUBDOMAIN_PATTERN: "expected a DNS subdomain: lower-case letters, digits, '-' "
        "and '.', starting and ending with a letter or digit; e.g. my-name or team.name",
        QUANTITY_PATTERN: "expected a Kubernetes quantity: a number with an optional unit; "
        "e.g. 64Gi, 500M or 8",
        QUALIFIED_NAME_PATTERN: "expected a label key ([prefix/]name): an optional DNS "
        "subdomain prefix and a name of at most 63 letters, digits, '-', '_' or '.'; "
        "e.g. nvidia.com/gpu",
        LABEL_VALUE_PATTERN: "expected a label value: at most 63 letters, digits, '-', '_' "
        "or '.', starting and ending with a letter or digit; e.g. team-a",
    }
)


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


# Names that look like credentials (RE2 and Python alike; CEL ``matches`` is a search):
# substrings (secret, passw..., a token but not TOKENIZERS_*), qualified keys (API_KEY,
# SSH_KEY, ...), connection strings, and whole words between underscores (KEY, AUTH,
# PASS, PWD, DSN): DB_PASS, MYSQL_PWD, OPENAI_KEY, HF_AUTH -- but not KEYBOARD or AUTHOR.
SECRET_NAME_REGEX = (
    r"(?i).*(secret|passw|passphrase|credential|bearer|cookie|token([^i]|$)"
    r"|(api|access|private|signing|encryption|ssh|client|master|license)_?key"
    r"|(database|db)_?(url|uri)|conn(ection)?_?str"
    r"|(^|_)(keys?|auth|pass|pwd|dsn|pat)(_|$)).*"
)


def _reserved_env_rule() -> dict[str, str]:
    """``spec.env`` never sets what the operator or torchrun sets (the names come from the
    contract, so the operator's pods and this rule cannot drift apart)."""
    prefixes = " || ".join(f"self.name.startsWith('{p}')" for p in RESERVED_ENV_PREFIXES)
    names = ", ".join(f"'{n}'" for n in RESERVED_ENV_NAMES)
    reserved = f"{', '.join(p + '*' for p in RESERVED_ENV_PREFIXES)}, {names.replace(chr(39), '')}"
    why = f"is set by the operator or torchrun and spec.env may not override it ({reserved})"
    return {
        **cel(f"!({prefixes} || self.name in [{names}])", f"this name {why}", field_path=".name"),
        "messageExpression": f'"\'" + self.name + "\' {why}"',
    }


class EnvVar(ApiModel):
    """An extra environment variable for the trainer containers. Names the operator or
    torchrun sets (``KUBETUNE_*``, ``PET_*``, ``TORCHELASTIC_*``, the rendezvous variables)
    are refused."""

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
            _reserved_env_rule(),
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
    """A Kubernetes toleration applied to the training pods.

    The rules are the API server's own rules for pod tolerations: what they refuse here
    would otherwise be refused only when the operator creates the pods.
    """

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.operator != 'Exists' || !has(self.value) || self.value == ''",
                "value must be empty when operator is Exists (Exists matches any value)",
                field_path=".value",
            ),
            cel(
                "(has(self.key) && self.key != '') || self.operator == 'Exists'",
                "operator must be Exists when key is empty (an empty key matches every "
                "taint key, so it cannot match one value)",
                field_path=".operator",
            ),
            cel(
                "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                "tolerationSeconds applies only to effect NoExecute",
                field_path=".tolerationSeconds",
            ),
        )
    }

    key: (
        Annotated[str, StringConstraints(max_length=317, pattern=QUALIFIED_NAME_PATTERN)] | None
    ) = Field(
        default=None,
        description="Taint key the toleration applies to; empty matches all keys "
        "(then operator must be Exists).",
    )
    operator: Literal["Exists", "Equal"] = Field(
        default="Equal", description="Exists matches any value; Equal matches `value`."
    )
    value: LabelValue | None = Field(
        default=None, description="Taint value to match with operator Equal; empty with Exists."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None,
        ge=0,
        description="Only with effect NoExecute: how long the pod stays bound after the "
        "taint appears.",
    )


class LocalObjectReference(ApiModel):
    """A reference to an object in the same namespace by name."""

    name: DNSSubdomain = Field(description="Name of the referent.")
