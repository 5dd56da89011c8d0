# syntax=docker/dockerfile:1
# The kubetune operator image (slim, no torch), for a normal container build system. The
# same recipe as `make image-operator` (images/build.py: mmdebstrap + umoci, no docker): a
# Debian bookworm base with python3 (3.11), the locked dependencies (images/operator.lock.txt,
# hash-checked) and the project wheel in /opt/kubetune installed by images/install_venv.py,
# user kubetune 1000:1000 (the pods' runAsUser/runAsGroup) with HOME /home/kubetune (an
# emptyDir in every pod). Build from the repository root (BuildKit):
#   docker build -f images/operator.Dockerfile -t kubetune/operator:0.1.0 \
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
COPY images/operator.lock.txt ./
RUN /tools/bin/pip download --no-cache-dir --no-deps --require-hashes \
      -r operator.lock.txt -d /wheels
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
# libstdc++6: C++ extension modules (google-re2 of cel-python). python3-pip-whl: pip for
# install_venv.py only, purged after.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libstdc++6 python3 python3-pip-whl \
 && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    --mount=type=bind,source=images,target=/images \
    python3 /images/install_venv.py --lock /images/operator.lock.txt --wheels /wheels \
 && apt-get purge -y python3-pip-whl
ENV PATH=/opt/kubetune/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    VIRTUAL_ENV=/opt/kubetune \
    HOME=/home/kubetune \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
LABEL org.opencontainers.image.title=kubetune-operator \
      org.opencontainers.image.description="The kubetune FineTuneJob operator (kopf); no torch." \
      org.opencontainers.image.source=${SOURCE} \
      org.opencontainers.image.version=${VERSION} \
      org.opencontainers.image.revision=${REVISION} \
      org.opencontainers.image.created=${CREATED} \
      org.opencontainers.image.licenses=Apache-2.0 \
      org.opencontainers.image.base.name=debian:bookworm
USER 1000:1000
WORKDIR /home/kubetune
EXPOSE 8080
ENTRYPOINT ["kubetune", "operator", "run"]
