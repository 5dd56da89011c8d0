# syntax=docker/dockerfile:1
# The shared trainer image: every method (full, PEFT, RLHF) runs from it under torchrun.
# For a normal container build system; the same recipe as `make images` (images/build.py:
# mmdebstrap + umoci, no docker): a Debian bookworm base with python3 (3.11), the locked
# dependencies (images/trainer.lock.txt, hash-checked: torch's CUDA wheels from PyPI bring
# their CUDA user-space libraries, so no CUDA base image is needed; boto3 for s3://) and the
# project wheel in /opt/kubetune installed by images/install_venv.py, user kubetune
# 1000:1000 (the pods' runAsUser/runAsGroup) with HOME /home/kubetune (an emptyDir in every
# pod). Build from the repository root (BuildKit):
#   docker build -f images/trainer.Dockerfile -t kubetune/trainer:0.1.0 \
#     --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg SOURCE_DATE_EPOCH="$(git log -1 --format=%ct)" \
#     --build-arg CREATED="$(date -u -d @"$(git log -1 --format=%ct)" +%Y-%m-%dT%H:%M:%SZ)" .
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS wheels
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /tools
WORKDIR /src
COPY images/trainer.lock.txt ./
RUN /tools/bin/pip download --no-cache-dir --no-deps --require-hashes \
      -r trainer.lock.txt -d /wheels
COPY pyproject.toml README.md ./
COPY src ./src
COPY operator ./operator
COPY trainer ./trainer
RUN /tools/bin/pip wheel --no-cache-dir --no-deps -w /wheels .

FROM ${BASE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
ARG SOURCE=https://github.com/kubetune/kubetune
ARG SOURCE_DATE_EPOCH
# libstdc++6: torch's, numpy's, pyarrow's extension modules. libquadmath0: torch's bundled
# libgfortran. rdma-core's user space: NCCL loads libibverbs for InfiniBand/RoCE.
# python3-pip-whl: pip for install_venv.py only, purged after. DS_BUILD_OPS=0: deepspeed
# (an sdist) builds no ops.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libstdc++6 python3 python3-pip-whl \
      libquadmath0 libibverbs1 librdmacm1 ibverbs-providers \
 && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    --mount=type=bind,source=images,target=/images \
    DS_BUILD_OPS=0 python3 /images/install_venv.py --lock /images/trainer.lock.txt \
      --wheels /wheels \
 && apt-get purge -y python3-pip-whl
ENV PATH=/opt/kubetune/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    VIRTUAL_ENV=/opt/kubetune \
    HOME=/home/kubetune \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    KUBETUNE_GIT_REVISION=${REVISION}
LABEL org.opencontainers.image.title=kubetune-trainer \
      org.opencontainers.image.description="The kubetune trainer (torch, CUDA wheels from PyPI): every method under torchrun." \
      org.opencontainers.image.source=${SOURCE} \
      org.opencontainers.image.version=${VERSION} \
      org.opencontainers.image.revision=${REVISION} \
      org.opencontainers.image.created=${CREATED} \
      org.opencontainers.image.licenses=Apache-2.0 \
      org.opencontainers.image.base.name=debian:bookworm
USER 1000:1000
WORKDIR /home/kubetune
EXPOSE 9400 29400
ENTRYPOINT ["python", "-m", "kubetune_trainer"]
