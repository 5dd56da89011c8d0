"""The Dockerfiles (the recipe for a normal container build system) describe the same
image as ``images/build.py``: user, env, entrypoint, ports, labels, Debian packages, lock
and install script. No tools needed: the files are compared, not built."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from images import build as image_build

IMAGES_DIR = image_build.IMAGES_DIR


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of the last stage, continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stage: list[tuple[str, str]] = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stage = []
        stage.append((instruction.upper(), args.strip()))
    return stage


def pairs(args: str, args_values: dict[str, str]) -> dict[str, str]:
    out = {}
    for token in shlex.split(args):
        key, _, value = token.partition("=")
        for name, default in args_values.items():
            value = value.replace("${" + name + "}", default)
        out[key] = value
    return out


@pytest.mark.parametrize("name", sorted(image_build.IMAGES))
def test_dockerfile_matches_the_build_script(name: str) -> None:
    spec = image_build.IMAGES[name]
    stage = final_stage(IMAGES_DIR / f"{name}.Dockerfile")
    args = {
        k: v
        for instruction, rest in stage
        if instruction == "ARG"
        for k, _, v in [rest.partition("=")]
    }
    ctx = image_build.BuildContext(
        version=args["VERSION"], revision=args["REVISION"], source_date_epoch=0,
        source=args["SOURCE"],
    )  # fmt: skip
    by_kind: dict[str, list[str]] = {}
    for instruction, rest in stage:
        by_kind.setdefault(instruction, []).append(rest)

    assert args["VERSION"] == image_build.BuildContext.detect().version
    assert by_kind["USER"] == [f"{image_build.UID}:{image_build.GID}"]
    assert by_kind["WORKDIR"] == [image_build.HOME]
    assert by_kind["ENTRYPOINT"] == [str(list(spec.entrypoint)).replace("'", '"')]
    assert by_kind["EXPOSE"] == [" ".join(str(p) for p in spec.ports)]
    env = {k: v for rest in by_kind["ENV"] for k, v in pairs(rest, args).items()}
    assert env == ctx.env(spec)
    labels = {k: v for rest in by_kind["LABEL"] for k, v in pairs(rest, args).items()}
    expected = ctx.labels(spec)
    expected["org.opencontainers.image.created"] = args["CREATED"]
    assert labels == expected
    run = " ".join(by_kind["RUN"])
    apt = run.split("apt-get install", 1)[1].split("&&", 1)[0].split()
    assert set(apt) - {"-y", "--no-install-recommends"} == {
        *image_build.BASE_PACKAGES,
        *spec.packages,
    }
    assert f"install_venv.py --lock /images/{spec.lock.name}" in run
    assert "apt-get purge -y python3-pip-whl" in run


@pytest.mark.parametrize(
    ("remote", "label"),
    [
        ("/work/clone-of-a-local-path", image_build.DEFAULT_SOURCE),
        ("https://example.com/team/kubetune.git", "https://example.com/team/kubetune.git"),
        ("git@example.com:team/kubetune.git", "git@example.com:team/kubetune.git"),
    ],
)
def test_the_source_label_names_a_repository_not_a_local_path(
    remote: str, label: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_git = image_build.git

    def git(*args: str) -> str:
        return remote if args[:2] == ("config", "--get") else real_git(*args)

    monkeypatch.setattr(image_build, "git", git)
    monkeypatch.delenv("KUBETUNE_IMAGE_SOURCE", raising=False)
    assert image_build.BuildContext.detect().source == label
