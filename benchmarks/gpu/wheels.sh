#!/usr/bin/env bash
# Fetch, HERE (a machine with a package registry), the wheels the GPU machine's image
# lacks, into .whl/ (git-ignored through .git/info/exclude); run.sh installs them there.
# The image has torch, transformers, peft, accelerate, safetensors, tokenizers, pytest,
# prometheus-client, matplotlib, pyyaml, typer and rich (/work/.library/device/KINDS.md);
# kubetune's API needs pydantic and cel-python on top. Python 3.12, x86-64 there.
# Not fetched: deepspeed (published as a source archive only) and bitsandbytes (its
# wheel alone nearly fills the 64 MiB a call may carry): without them the ZeRO-3 and
# QLoRA tests skip, and bench_gpu.py says so.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> "$(git rev-parse --git-path info/exclude)"
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  cel-python==0.5.0 lark==1.3.1 jmespath==1.1.0 google-re2==1.1.20251105 \
  pendulum==3.3.0 tzdata==2026.6
du -sh .whl
