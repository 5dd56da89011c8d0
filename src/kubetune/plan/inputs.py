"""Where ``kubetune plan`` finds the model's shape and the epoch's tokens on a laptop."""

from __future__ import annotations

from pathlib import Path

from kubetune.api.resolve import ResolvedJob
from kubetune.contract.uris import Scheme, parse_uri
from kubetune.plan.shape import ModelShape, ShapeError

#: characters per token of English text with a ~32k-50k BPE vocabulary (rule of thumb)
CHARS_PER_TOKEN = 4.0


def local_location(uri: str, pvc_root: Path | None) -> Path | None:
    """A location as a local path: absolute paths and file://, pvc:// under ``pvc_root``."""
    parsed = parse_uri(uri)
    if parsed.scheme is Scheme.FILE:
        return Path(parsed.path)
    if parsed.scheme is Scheme.PVC and pvc_root is not None:
        return pvc_root / parsed.name / parsed.path.strip("/")
    return None


def model_shape(job: ResolvedJob, model_config: Path | None, pvc_root: Path | None) -> ModelShape:
    """The shape from ``--model-config``, else from the model's own config.json."""
    if model_config is not None:
        return ModelShape.from_file(model_config)
    uri = job.spec.model.uri
    local = local_location(uri, pvc_root)
    if local is None or not (local / "config.json").is_file():
        where = f" ({local} has no config.json)" if local is not None else ""
        raise ShapeError(
            f"the model {uri} is not readable here{where}: pass --model-config with its "
            "config.json (for a hub model, the config.json of the same repository), or "
            "--pvc-root for pvc:// locations copied locally"
        )
    return ModelShape.from_file(local)


def dataset_tokens(job: ResolvedJob, pvc_root: Path | None) -> tuple[int | None, str]:
    """Tokens of one epoch from a local JSONL training file: each row's characters / 4,
    capped at maxSeqLength, less the eval split. (None, why) when it cannot be read."""
    spec = job.spec.dataset
    local = local_location(spec.train, pvc_root)
    if local is None or not local.is_file() or local.suffix not in (".jsonl", ".json"):
        return None, "pass --epoch-tokens (the training data is not a local JSONL file)"
    cap = spec.max_seq_length
    rows = tokens = 0
    with local.open() as handle:
        for line in handle:
            if line.strip():
                rows += 1
                tokens += min(cap, int(len(line) / CHARS_PER_TOKEN) + 1)
    held_out = spec.eval_split if spec.eval is None and spec.eval_split else 0.0
    tokens = int(tokens * (1 - held_out))
    return tokens, f"{rows:,} rows of {local.name}, ~{CHARS_PER_TOKEN:g} characters per token"
