#!/usr/bin/env bash
# Builds the local control plane binaries from source at the versions pinned in
# versions.env (next to this script) and caches them per version OUTSIDE the repository:
#
#   ${KUBETUNE_CACHE_DIR:-$HOME/.cache/kubetune}/bin/etcd-<v>/etcd
#   .../bin/kubernetes-<v>+kueue-<kv>+kwok-<wv>/{kube-apiserver,kube-controller-manager,
#                                                kube-scheduler,kubectl,kueue,kwok}
#   .../bin/helm-<v>/helm
#   .../bin/prometheus-<v>/{prometheus,promtool}
#
# Usage: build.sh [--force] [etcd|kubernetes|helm|prometheus ...]   (kwok: built with kubernetes)
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
      sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    etcd | kubernetes | helm | prometheus) COMPONENTS+=("$arg") ;;
    kwok) COMPONENTS+=(kubernetes) ;; # one go build with the cluster binaries
    *)
      echo "build.sh: unknown argument: $arg" >&2
      exit 2
      ;;
  esac
done
if [[ ${#COMPONENTS[@]} -eq 0 ]]; then
  COMPONENTS=(etcd kubernetes helm prometheus)
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

# gomod MODULE REQUIRE...: a wrapper go.mod (in the current directory) requiring "PATH VERSION"s
# (its go line: $GOMOD_GO, default GO_MIN_VERSION).
gomod() {
  printf 'module kubetune.local/devcluster/%s\n\ngo %s\n\nrequire (\n' "$1" "${GOMOD_GO:-$GO_MIN_VERSION}"
  shift
  printf '\t%s\n' "$@"
  printf ')\n'
} >go.mod

# component NAME VERSION BINARY...: build NAME unless its cache directory is complete (every
# binary and the .complete marker). build_NAME VERSION STAGING runs in a fresh work directory
# and writes the binaries into STAGING, which then replaces the cache directory atomically.
# Concurrent builds of one component (parallel test sessions) wait for each other on a lock,
# then find it cached, instead of wiping each other's work directory.
component() {
  local name=$1 ver=$2
  shift 2
  local final="$BIN_ROOT/$name-$ver" b cached=$((FORCE == 0)) lock
  exec {lock}>"$BIN_ROOT/.$name-$ver.lock"
  if command -v flock >/dev/null && ! flock -n "$lock"; then
    log "$name $ver: another build is running; waiting for it"
    flock "$lock"
  fi
  [[ -f "$final/.complete" ]] || cached=0
  for b in "$@"; do [[ -x "$final/$b" ]] || cached=0; done
  if [[ $cached -eq 1 ]]; then
    log "$name $ver: cached in $final"
    exec {lock}>&-
    return
  fi
  local work="$WORK_ROOT/$name-$ver" staging="$BIN_ROOT/.$name-$ver.tmp"
  rm -rf "$work" "$staging" && mkdir -p "$work" "$staging"
  log "$name $ver: building $*"
  (cd "$work" && "build_$name" "$ver" "$staging")
  date -u +%Y-%m-%dT%H:%M:%SZ >"$staging/.complete"
  rm -rf "$final.old"
  if [[ -e "$final" ]]; then mv "$final" "$final.old"; fi
  mv "$staging" "$final"
  rm -rf "$final.old"
  exec {lock}>&-
  log "$name $ver: done -> $final"
}

build_etcd() {
  local ver=$1 staging=$2
  # etcd's server module replaces its sibling modules with ../ paths; those are
  # ignored for a dependency, so require the siblings at the same version.
  local m mods=()
  for m in api/v3 client/pkg/v3 client/v3 pkg/v3 server/v3; do mods+=("go.etcd.io/etcd/$m $ver"); done
  gomod etcd "${mods[@]}"
  "$GO" build -trimpath -ldflags "-s -w" -o "$staging/etcd" go.etcd.io/etcd/server/v3
}

build_kubernetes() {
  # $1 is the cache key (kubernetes-<v>+kueue-<kv>+kwok-<wv>); the versions come from
  # versions.env.
  local ver=$KUBERNETES_VERSION staging=$2
  log "kubernetes $ver + kueue $KUEUE_VERSION + kwok $KWOK_VERSION: generating wrapper go.mod"
  bash "$HERE/gen-kubernetes-gomod.sh" "$ver" . \
    "sigs.k8s.io/kueue@${KUEUE_VERSION}" "sigs.k8s.io/kwok@${KWOK_VERSION}"
  local major=${ver#v} minor=${ver#v*.}
  major=${major%%.*}
  minor=${minor%%.*}
  local ld="-s -w" pkg targets=()
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X ${pkg}.gitVersion=${ver} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor}"
    ld+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${BUILD_DATE}"
  done
  # Kueue's version variables, as its Makefile sets them (the commit: the module's origin).
  local kueue_commit
  kueue_commit=$("$GO" mod download -json "sigs.k8s.io/kueue@${KUEUE_VERSION}" |
    sed -n 's/^[[:space:]]*"Hash": "\(.*\)",\{0,1\}$/\1/p')
  pkg=sigs.k8s.io/kueue/pkg/version
  ld+=" -X ${pkg}.GitVersion=${KUEUE_VERSION} -X ${pkg}.GitCommit=${kueue_commit:-unknown}"
  ld+=" -X ${pkg}.BuildDate=${BUILD_DATE}"
  ld+=" -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
  # one go build, so the packages the six binaries share (client-go, apimachinery, ...)
  # compile once
  for pkg in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    targets+=("k8s.io/kubernetes/cmd/$pkg")
  done
  targets+=(sigs.k8s.io/kueue/cmd/kueue sigs.k8s.io/kwok/cmd/kwok)
  "$GO" build -trimpath -ldflags "$ld" -o "$staging/" "${targets[@]}"
}

build_helm() {
  local ver=$1 staging=$2
  local major=${ver#v}
  major=${major%%.*}
  local mod="helm.sh/helm/v${major}"
  # Kubernetes minor that helm was built against (its client-go), as helm's Makefile does;
  # asked before go.mod exists here, i.e. outside any module.
  local helm_gomod client_go k8s_minor
  helm_gomod=$("$GO" mod download -json "${mod}@${ver}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
  client_go=$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$helm_gomod")
  k8s_minor=${client_go#v0.}
  k8s_minor=${k8s_minor%%.*}
  gomod helm "$mod $ver"
  local ld="-s -w -X ${mod}/internal/version.version=${ver} -X ${mod}/internal/version.gitTreeState=clean"
  if [[ "$major" == "3" && -n "$k8s_minor" ]]; then
    ld+=" -X ${mod}/pkg/lint/rules.k8sVersionMajor=1 -X ${mod}/pkg/lint/rules.k8sVersionMinor=${k8s_minor}"
    ld+=" -X ${mod}/pkg/chartutil.k8sVersionMajor=1 -X ${mod}/pkg/chartutil.k8sVersionMinor=${k8s_minor}"
  fi
  "$GO" build -trimpath -ldflags "$ld" -o "$staging/helm" "${mod}/cmd/helm"
}

build_prometheus() {
  local ver=$1 staging=$2
  # Its own module graph (versions.env says why); its go.mod needs a newer Go than the rest.
  if ! version_ge "$GO_VERSION" "$PROMETHEUS_GO_MIN_VERSION"; then
    echo "build.sh: prometheus $ver needs Go >= ${PROMETHEUS_GO_MIN_VERSION} (have ${GO_VERSION})" >&2
    return 3
  fi
  # module v0.3MM.P is release 3.MM.P
  local mm=${ver#v0.}
  local minor=${mm%%.*} patch=${mm#*.}
  local release="$((minor / 100)).$((minor % 100)).${patch}"
  local mod=github.com/prometheus/prometheus pkg=github.com/prometheus/common/version
  GOMOD_GO=$PROMETHEUS_GO_MIN_VERSION gomod prometheus "$mod $ver"
  local ld="-s -w -X ${pkg}.Version=${release} -X ${pkg}.Revision=${ver} -X ${pkg}.Branch=${ver}"
  ld+=" -X ${pkg}.BuildUser=kubetune-build.sh -X ${pkg}.BuildDate=${BUILD_DATE}"
  # No `builtinassets` tag (upstream's release builds embed the npm-built web UI, which the
  # module does not contain): the HTTP API, all we use, is complete without it.
  # Service discovery: only what the dev cluster uses (file and http are always in, plus
  # kubernetes); upstream's build tags drop the cloud SDKs, which were most of the compile time.
  local tags=remove_all_sd,enable_kubernetes_sd
  # One go build, so the packages both binaries share compile once.
  "$GO" build -trimpath -tags "$tags" -ldflags "$ld" -o "$staging/" \
    "${mod}/cmd/prometheus" "${mod}/cmd/promtool"
}

mkdir -p "$BIN_ROOT" "$WORK_ROOT"
START=$SECONDS
log "cache: $CACHE_DIR (go ${GO_VERSION}, GOMODCACHE=$("$GO" env GOMODCACHE), GOCACHE=$("$GO" env GOCACHE))"
for c in "${COMPONENTS[@]}"; do
  case "$c" in
    etcd) component etcd "$ETCD_VERSION" etcd ;;
    kubernetes)
      # Kueue and KWOK are built in the same `go build` (versions.env says why): their versions
      # are part of the cache key, so a cache built without them (or other versions) is rebuilt
      component kubernetes "${KUBERNETES_VERSION}+kueue-${KUEUE_VERSION}+kwok-${KWOK_VERSION}" \
        kube-apiserver kube-controller-manager kube-scheduler kubectl kueue kwok
      ;;
    helm) component helm "$HELM_VERSION" helm ;;
    prometheus) component prometheus "$PROMETHEUS_VERSION" prometheus promtool ;;
  esac
done
log "all done in $((SECONDS - START))s"
