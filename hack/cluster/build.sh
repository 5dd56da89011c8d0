#!/usr/bin/env bash
# Builds the local control plane binaries from source at the versions pinned in
# hack/cluster/versions.env and caches them per version OUTSIDE the repository:
#
#   ${KUBETUNE_CACHE_DIR:-$HOME/.cache/kubetune}/bin/etcd-<v>/etcd
#   .../bin/kubernetes-<v>/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl}
#   .../bin/kwok-<v>/kwok
#   .../bin/helm-<v>/helm
#
# Usage: hack/cluster/build.sh [--force] [etcd|kubernetes|kwok|helm ...]
#
# Needs only a Go toolchain (>= GO_MIN_VERSION in versions.env; $GO, `go` on PATH
# or /usr/local/go/bin/go) and access to the Go module proxy. A component whose
# cache directory is complete is skipped. Modules come from GOMODCACHE and
# compiled packages from GOCACHE as usual (Go's defaults unless set).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$HERE/versions.env"

CACHE_DIR=${KUBETUNE_CACHE_DIR:-$HOME/.cache/kubetune}
BIN_ROOT="$CACHE_DIR/bin"
WORK_ROOT="$CACHE_DIR/build"

FORCE=0
COMPONENTS=()
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h | --help)
      sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    etcd | kubernetes | kwok | helm) COMPONENTS+=("$arg") ;;
    *)
      echo "build.sh: unknown argument: $arg" >&2
      exit 2
      ;;
  esac
done
if [[ ${#COMPONENTS[@]} -eq 0 ]]; then
  COMPONENTS=(etcd kubernetes kwok helm)
fi

# --- Go toolchain -------------------------------------------------------------
if [[ -z "${GO:-}" ]]; then
  if command -v go >/dev/null 2>&1; then
    GO=$(command -v go)
  elif [[ -x /usr/local/go/bin/go ]]; then
    GO=/usr/local/go/bin/go
  else
    echo "build.sh: no Go toolchain found (set GO=/path/to/go); need go >= ${GO_MIN_VERSION}" >&2
    exit 3
  fi
fi
export GO
GO_VERSION=$("$GO" env GOVERSION)
GO_VERSION=${GO_VERSION#go}
version_ge() { # version_ge A B: A >= B (dotted numbers)
  [[ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" == "$2" ]]
}
if ! version_ge "$GO_VERSION" "$GO_MIN_VERSION"; then
  echo "build.sh: Go ${GO_VERSION} is too old; need >= ${GO_MIN_VERSION}" >&2
  exit 3
fi

# Never try to download another toolchain; resolve missing requirements while
# building (the wrapper modules carry no go.sum); static, reproducible binaries.
export GOTOOLCHAIN=local
export GOFLAGS="-mod=mod"
export CGO_ENABLED=0
BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)

log() { printf '[build.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# is_complete DIR BIN...: the cache dir has every binary and its marker file.
is_complete() {
  local dir=$1
  shift
  [[ -f "$dir/.complete" ]] || return 1
  local b
  for b in "$@"; do [[ -x "$dir/$b" ]] || return 1; done
}

# install_dir STAGING FINAL: move a finished build into place atomically.
install_dir() {
  local staging=$1 final=$2
  date -u +%Y-%m-%dT%H:%M:%SZ >"$staging/.complete"
  rm -rf "$final.old"
  if [[ -e "$final" ]]; then mv "$final" "$final.old"; fi
  mv "$staging" "$final"
  rm -rf "$final.old"
}

build_etcd() {
  local ver=$ETCD_VERSION final="$BIN_ROOT/etcd-$ETCD_VERSION"
  if [[ $FORCE -eq 0 ]] && is_complete "$final" etcd; then
    log "etcd $ver: cached in $final"
    return
  fi
  local work="$WORK_ROOT/etcd-$ver"
  rm -rf "$work" && mkdir -p "$work"
  # etcd's server module replaces its sibling modules with ../ paths; those are
  # ignored for a dependency, so require the siblings at the same version.
  cat >"$work/go.mod" <<EOF
module kubetune.local/devcluster/etcd

go ${GO_MIN_VERSION}

require (
	go.etcd.io/etcd/api/v3 ${ver}
	go.etcd.io/etcd/client/pkg/v3 ${ver}
	go.etcd.io/etcd/client/v3 ${ver}
	go.etcd.io/etcd/pkg/v3 ${ver}
	go.etcd.io/etcd/server/v3 ${ver}
)
EOF
  local staging="$BIN_ROOT/.etcd-$ver.tmp"
  rm -rf "$staging" && mkdir -p "$staging"
  log "etcd $ver: building"
  (cd "$work" && "$GO" build -trimpath \
    -ldflags "-s -w" \
    -o "$staging/etcd" go.etcd.io/etcd/server/v3)
  install_dir "$staging" "$final"
  log "etcd $ver: done -> $final"
}

build_kubernetes() {
  local ver=$KUBERNETES_VERSION final="$BIN_ROOT/kubernetes-$KUBERNETES_VERSION"
  local bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
  if [[ $FORCE -eq 0 ]] && is_complete "$final" "${bins[@]}"; then
    log "kubernetes $ver: cached in $final"
    return
  fi
  local work="$WORK_ROOT/kubernetes-$ver"
  rm -rf "$work" && mkdir -p "$work"
  log "kubernetes $ver: generating wrapper go.mod"
  "$HERE/gen-kubernetes-gomod.sh" "$ver" "$work"
  local major minor
  major=${ver#v}
  major=${major%%.*}
  minor=${ver#v*.}
  minor=${minor%%.*}
  local ld="-s -w"
  local pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X ${pkg}.gitVersion=${ver} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor}"
    ld+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${BUILD_DATE}"
  done
  local staging="$BIN_ROOT/.kubernetes-$ver.tmp"
  rm -rf "$staging" && mkdir -p "$staging"
  log "kubernetes $ver: building ${bins[*]} (one go build, shared packages)"
  local targets=()
  for pkg in "${bins[@]}"; do targets+=("k8s.io/kubernetes/cmd/$pkg"); done
  (cd "$work" && "$GO" build -trimpath -ldflags "$ld" -o "$staging/" "${targets[@]}")
  install_dir "$staging" "$final"
  log "kubernetes $ver: done -> $final"
}

build_kwok() {
  local ver=$KWOK_VERSION final="$BIN_ROOT/kwok-$KWOK_VERSION"
  if [[ $FORCE -eq 0 ]] && is_complete "$final" kwok; then
    log "kwok $ver: cached in $final"
    return
  fi
  local work="$WORK_ROOT/kwok-$ver"
  rm -rf "$work" && mkdir -p "$work"
  printf 'module kubetune.local/devcluster/kwok\n\ngo %s\n\nrequire sigs.k8s.io/kwok %s\n' \
    "$GO_MIN_VERSION" "$ver" >"$work/go.mod"
  local staging="$BIN_ROOT/.kwok-$ver.tmp"
  rm -rf "$staging" && mkdir -p "$staging"
  log "kwok $ver: building"
  (cd "$work" && "$GO" build -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${ver#v}" \
    -o "$staging/kwok" sigs.k8s.io/kwok/cmd/kwok)
  install_dir "$staging" "$final"
  log "kwok $ver: done -> $final"
}

build_helm() {
  local ver=$HELM_VERSION final="$BIN_ROOT/helm-$HELM_VERSION"
  if [[ $FORCE -eq 0 ]] && is_complete "$final" helm; then
    log "helm $ver: cached in $final"
    return
  fi
  local major=${ver#v}
  major=${major%%.*}
  local mod="helm.sh/helm/v${major}"
  local work="$WORK_ROOT/helm-$ver"
  rm -rf "$work" && mkdir -p "$work"
  printf 'module kubetune.local/devcluster/helm\n\ngo %s\n\nrequire %s %s\n' \
    "$GO_MIN_VERSION" "$mod" "$ver" >"$work/go.mod"
  # Kubernetes minor that helm was built against (its client-go), as helm's Makefile does.
  local helm_gomod client_go k8s_minor
  helm_gomod=$("$GO" mod download -json "${mod}@${ver}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
  client_go=$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$helm_gomod")
  k8s_minor=${client_go#v0.}
  k8s_minor=${k8s_minor%%.*}
  local ld="-s -w -X ${mod}/internal/version.version=${ver} -X ${mod}/internal/version.gitTreeState=clean"
  if [[ "$major" == "3" && -n "$k8s_minor" ]]; then
    ld+=" -X ${mod}/pkg/lint/rules.k8sVersionMajor=1 -X ${mod}/pkg/lint/rules.k8sVersionMinor=${k8s_minor}"
    ld+=" -X ${mod}/pkg/chartutil.k8sVersionMajor=1 -X ${mod}/pkg/chartutil.k8sVersionMinor=${k8s_minor}"
  fi
  local staging="$BIN_ROOT/.helm-$ver.tmp"
  rm -rf "$staging" && mkdir -p "$staging"
  log "helm $ver: building"
  (cd "$work" && "$GO" build -trimpath -ldflags "$ld" -o "$staging/helm" "${mod}/cmd/helm")
  install_dir "$staging" "$final"
  log "helm $ver: done -> $final"
}

mkdir -p "$BIN_ROOT" "$WORK_ROOT"
START=$SECONDS
log "cache: $CACHE_DIR (go ${GO_VERSION}, GOMODCACHE=$("$GO" env GOMODCACHE), GOCACHE=$("$GO" env GOCACHE))"
for c in "${COMPONENTS[@]}"; do
  "build_$c"
done
log "all done in $((SECONDS - START))s"
