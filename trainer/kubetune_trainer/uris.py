"""Turn API locations (pvc://, s3://, file://, /abs, hf://) into local paths.

The trainer only ever reads local files: the operator mounts each referenced
PersistentVolumeClaim at ``$KUBETUNE_PVC_ROOT/<claim>`` (default ``/mnt/pvc``), image
paths are used as they are, ``hf://`` ids are looked up in the pre-populated Hugging
Face cache with ``local_files_only=True`` (never downloaded), and ``s3://`` objects are
fetched with boto3 when the image has it (otherwise a clear error tells the operator to
mount the data with an init container instead). Parsing and the mount convention are
the contract's (``kubetune.contract.uris``); fetching is the trainer's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from kubetune.contract.env import AWS_ENDPOINT_URL_ENV, CACHE_ENV, HF_HOME_ENV, PVC_ROOT_ENV
from kubetune.contract.paths import DEFAULT_PVC_ROOT
from kubetune.contract.uris import Scheme, StorageUri, parse_uri
from kubetune_trainer.errors import TrainerError

ErrorFactory = Callable[[str], TrainerError]


def pvc_root() -> Path:
    return Path(os.environ.get(PVC_ROOT_ENV, str(DEFAULT_PVC_ROOT)))


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, str(Path.home() / ".cache" / "kubetune")))


def local_path_of(uri: str) -> Path | None:
    """The local path of a mounted location (pvc, file, absolute), else None."""
    local = parse_uri(uri).local_path(pvc_root())
    return None if local is None else Path(local)


def resolve_location(
    uri: str,
    error: ErrorFactory,
    *,
    what: str,
    revision: str | None = None,
    repo_type: str = "model",
) -> Path:
    """A local path holding the content of ``uri``; raises ``error(...)`` if unreachable."""
    try:
        parsed = parse_uri(uri)
    except ValueError as exc:
        raise error(f"{what} {uri}: {exc}") from exc
    local = parsed.local_path(pvc_root())
    if local is not None:
        if not Path(local).exists():
            hint = ""
            if parsed.scheme is Scheme.PVC:
                hint = f" (PVCs are mounted under ${PVC_ROOT_ENV}={pvc_root()})"
            raise error(f"{what} {uri} not found at {local}{hint}")
        return Path(local)
    if parsed.scheme is Scheme.HF:
        return _from_hf_cache(
            uri, parsed.name, error, what=what, revision=revision, repo_type=repo_type
        )
    return _from_s3(uri, parsed, error, what=what)


def _from_hf_cache(
    uri: str,
    repo_id: str,
    error: ErrorFactory,
    *,
    what: str,
    revision: str | None,
    repo_type: str,
) -> Path:
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(
            repo_id=repo_id, revision=revision, repo_type=repo_type, local_files_only=True
        )
    except Exception as exc:  # LocalEntryNotFoundError and friends
        raise error(
            f"{what} {uri} is not in the local Hugging Face cache/mirror "
            f"({HF_HOME_ENV}={os.environ.get(HF_HOME_ENV, '~/.cache/huggingface')}); "
            f"kubetune never downloads from a hub: {exc}"
        ) from exc
    return Path(path)


def _from_s3(uri: str, location: StorageUri, error: ErrorFactory, *, what: str) -> Path:
    """Download an s3:// object or prefix into the cache (atomically) with boto3."""
    try:
        import boto3  # type: ignore[import-not-found]
    except ImportError as exc:
        raise error(
            f"{what} {uri}: s3:// locations need boto3 in the trainer image, which this "
            "image does not have; mount the data with a PVC (pvc://) or an init container"
        ) from exc
    bucket, prefix = location.name, location.path
    target = cache_root() / "s3" / bucket / prefix
    marker = target.parent / f".{target.name}.complete"
    if marker.exists():
        return target
    client = boto3.client("s3", endpoint_url=os.environ.get(AWS_ENDPOINT_URL_ENV))
    staging = Path(tempfile.mkdtemp(prefix=".s3-", dir=_ensure(target.parent)))
    try:
        keys = _list_keys(client, bucket, prefix)
        if not keys:
            raise error(f"{what} {uri}: no objects under this prefix")
        single = keys == [prefix]
        for key in keys:
            rel = Path(key).name if single else Path(key).relative_to(prefix)
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(dest))
        final = staging / Path(prefix).name if single else staging
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(final, target)
        marker.touch()
    except TrainerError:
        raise
    except Exception as exc:
        raise error(f"{what} {uri}: download failed: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _list_keys(client: object, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    paginator = client.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return sorted(k for k in keys if not k.endswith("/"))


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
