#!/usr/bin/env bash
# Debian packages some test tiers use, installed when missing (root with apt-get only;
# elsewhere those tiers skip, naming what is missing -- under CI=true they fail instead):
#   openssl                 certificates of the local control plane
#   mmdebstrap umoci        the OCI images without a docker engine (images/, tests/images)
#   bubblewrap iproute2     the dev cluster's real-pod nodes (sandboxes, network namespaces)
set -euo pipefail
packages=(openssl mmdebstrap umoci bubblewrap iproute2)
commands=(openssl mmdebstrap umoci bwrap ip)
missing=()
for i in "${!commands[@]}"; do
  command -v "${commands[$i]}" >/dev/null || missing+=("${packages[$i]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "note: ${missing[*]} not installed (needs root and apt-get): the tiers that use them skip" >&2
fi
