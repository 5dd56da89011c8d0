"""Location parsing and the PVC mount convention, shared by the operator and the trainer."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import pytest

from kubetune.api.common import LOCATION_PATTERN, OUTPUT_PATTERN
from kubetune.contract import Scheme, StorageUri, parse_uri
from kubetune.contract.uris import pvc_mount_path


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("pvc://models", StorageUri(Scheme.PVC, "models", "")),
        ("pvc://ckpt/tune/run-1", StorageUri(Scheme.PVC, "ckpt", "tune/run-1")),
        ("s3://bucket/data/train.jsonl", StorageUri(Scheme.S3, "bucket", "data/train.jsonl")),
        ("s3://bucket", StorageUri(Scheme.S3, "bucket", "")),
        ("hf://org/name", StorageUri(Scheme.HF, "org/name", "")),
        ("hf://gpt2", StorageUri(Scheme.HF, "gpt2", "")),
        ("file:///models/x", StorageUri(Scheme.FILE, "", "/models/x")),
        ("/models/x", StorageUri(Scheme.FILE, "", "/models/x")),
    ],
)
def test_parse(uri: str, expected: StorageUri) -> None:
    assert parse_uri(uri) == expected


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "unsupported location scheme"),
        ("models/x", "unsupported location scheme"),
        ("gs://bucket/x", "unsupported location scheme"),
        ("PVC://models", "unsupported location scheme"),
        ("pvc://", "without a claim"),
        ("pvc:///sub", "without a claim"),
        ("s3:///key", "without a bucket"),
        ("hf://", "without a repository id"),
        ("file://relative/x", "absolute path"),
    ],
)
def test_bad_locations_are_refused(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_uri(uri)


@pytest.mark.parametrize(
    ("uri", "local"),
    [
        ("pvc://ckpt", "/mnt/pvc/ckpt"),
        ("pvc://ckpt/tune", "/mnt/pvc/ckpt/tune"),
        ("pvc://ckpt/tune/", "/mnt/pvc/ckpt/tune"),
        ("pvc://ckpt//tune", "/mnt/pvc/ckpt/tune"),
        ("file:///models/x", "/models/x"),
        ("/models/x", "/models/x"),
    ],
)
def test_local_paths_follow_the_mount_convention(uri: str, local: str) -> None:
    assert parse_uri(uri).local_path() == PurePosixPath(local)


def test_remote_locations_have_no_local_path_and_the_root_is_configurable() -> None:
    assert parse_uri("s3://bucket/x").local_path() is None
    assert parse_uri("hf://org/name").local_path() is None
    assert parse_uri("pvc://data/a.jsonl").local_path("/tmp/pvc") == PurePosixPath(
        "/tmp/pvc/data/a.jsonl"
    )
    assert pvc_mount_path("data", "/tmp/pvc/") == PurePosixPath("/tmp/pvc/data")


@pytest.mark.parametrize(
    "uri",
    [
        "pvc://ckpt/../../etc/x",
        "pvc://ckpt/..",
        "pvc://ckpt/run/../../other-claim/x",
        "s3://bucket/data/../../x",
        "file:///models/../etc/passwd",
        "/models/../../etc/passwd",
        "/..",
        "hf://org/..",
    ],
)
def test_parent_segments_are_refused_in_every_scheme(uri: str) -> None:
    """``..`` would put the output outside the claim and still report success (#10)."""
    with pytest.raises(ValueError, match=r"'\.\.' path segment"):
        parse_uri(uri)


@pytest.mark.parametrize(
    "uri", ["pvc://ckpt/..a/b", "pvc://ckpt/a..b", "pvc://ckpt/.../x", "/models/.cache/x"]
)
def test_dots_that_are_not_parent_segments_are_fine(uri: str) -> None:
    assert parse_uri(uri).path


def test_a_hand_built_location_cannot_escape_its_claim_either() -> None:
    with pytest.raises(ValueError, match="climbs out of claim"):
        StorageUri(Scheme.PVC, "ckpt", "a/../../etc").local_path()
    # a leading slash is not an absolute escape: the path stays under the mount
    assert parse_uri("pvc://ckpt//etc/x").local_path() == PurePosixPath("/mnt/pvc/ckpt/etc/x")


@pytest.mark.parametrize(
    ("uri", "accepted"),
    [
        ("pvc://ckpt/../../etc/x", False),
        ("s3://bucket/a/../b", False),
        ("file:///a/../b", False),
        ("/a/..", False),
        ("pvc://ckpt/..a/.b/./c", True),
        ("pvc://ckpt//tune/", True),
        ("s3://bucket/x...y", True),
    ],
)
def test_the_api_pattern_and_the_parser_agree(uri: str, accepted: bool) -> None:
    """The CRD's pattern (what the API server checks) refuses what the parser refuses."""
    assert bool(re.match(LOCATION_PATTERN, uri)) is accepted
    assert bool(re.match(OUTPUT_PATTERN, uri)) is accepted
    if accepted:
        parse_uri(uri)
    else:
        with pytest.raises(ValueError):
            parse_uri(uri)
