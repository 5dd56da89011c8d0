#!/usr/bin/env bash
# `make cluster-binaries` and habit: the build script ships inside the package (so an installed
# kubetune can build the dev cluster too): src/kubetune/devcluster/data/build.sh.
exec bash "$(dirname "${BASH_SOURCE[0]}")/../../src/kubetune/devcluster/data/build.sh" "$@"
