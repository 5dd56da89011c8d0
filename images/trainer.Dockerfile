# The shared trainer image: every method (full, PEFT, RLHF) runs from it under torchrun.
#   docker build -f images/trainer.Dockerfile -t kubetune/trainer:0.1.0 .
# The base provides CUDA user-space libraries matching the torch wheel; pass another
# base (e.g. a plain python image for CPU-only clusters) with --build-arg BASE=...
ARG BASE=python:3.11-slim
FROM ${BASE}
ENV PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/workspace/.cache/huggingface \
    PIP_NO_CACHE_DIR=1
RUN useradd --uid 65532 --create-home --home-dir /workspace --shell /usr/sbin/nologin kubetune
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY trainer ./trainer
COPY operator ./operator
RUN pip install '.[trainer]' && rm -rf /src
USER 65532:65532
WORKDIR /workspace
EXPOSE 9400 29400
ENTRYPOINT ["python", "-m", "kubetune_trainer"]
