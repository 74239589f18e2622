#!/usr/bin/env bash
# Provides etcd, kube-apiserver and kube-controller-manager in a cache keyed by version. A binary the
# user already has (setup-envtest's KUBEBUILDER_ASSETS directory, then PATH) is used when its
# --version is of the pinned minor (Kubernetes v1.35.x, etcd 3.6.x): it is linked into the cache.
# The others are built from Go modules (prebuilt downloads such as envtest's, kind and Docker images
# are not available everywhere this must run). Idempotent: a complete cache is left alone. Cold:
# ~10 minutes on 2 cores (kube-apiserver 7, kube-controller-manager 1.5, etcd 0.7); warm: nothing.
#
#   COUCHDB_CONTROLLER_CACHE  cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/couchdb-controller)
#   KUBEBUILDER_ASSETS        a directory with the binaries (setup-envtest use -p path 1.35.x)
#   K8S_CONTROLPLANE_FORCE=1  rebuild even if the binaries exist (and ignore found ones)
set -euo pipefail
K8S_VERSION=v1.35.4   # etcd follows from build/go.mod (v3.6.5, the version kubernetes pins)
here="$(cd "$(dirname "$0")" && pwd)"
cache="${COUCHDB_CONTROLLER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/couchdb-controller}"
out="$cache/k8s-$K8S_VERSION"
bins=(etcd kube-apiserver kube-controller-manager)

missing() {
  local b
  for b in "${bins[@]}"; do
    if [ "${K8S_CONTROLPLANE_FORCE:-}" = 1 ] || [ ! -x "$out/$b" ]; then echo "$b"; fi
  done
}

if [ -z "$(missing)" ]; then
  echo "controlplane: $out is complete"
  exit 0
fi
mkdir -p "$out"
# Two callers (make and a test run) must not build into the same place at once.
if command -v flock >/dev/null; then
  exec 9>"$out/.build.lock"
  flock 9
fi
todo=$(missing)
[ -n "$todo" ] || { echo "controlplane: $out is complete"; exit 0; }

# want prints the version a binary must report: its --version output must contain it.
want() {
  case "$1" in
    etcd) echo "etcd Version: 3.6." ;;
    *) echo "Kubernetes ${K8S_VERSION%.*}." ;;
  esac
}

# find_binary sets hit to a usable copy of $1 the user already has (a resolved path), or to nothing;
# candidates of another version are added to rejected.
rejected=()
find_binary() {
  local b=$1 c cands=() v
  hit=""
  [ -n "${KUBEBUILDER_ASSETS:-}" ] && cands+=("$KUBEBUILDER_ASSETS/$b")
  c=$(command -v "$b" 2>/dev/null) && cands+=("$c")
  for c in "${cands[@]}"; do
    [ -x "$c" ] && [ ! -d "$c" ] || continue
    v=$(timeout 10 "$c" --version 2>&1 | head -n 3 | tr '\n' ' ') || true
    if [[ "$v" == *"$(want "$b")"* ]]; then
      hit=$(readlink -f "$c")
      return
    fi
    rejected+=("controlplane: not using $c: its --version says \"${v% }\", want $(want "$b")x")
  done
}

found=() build=()
for b in $todo; do
  hit=""
  [ "${K8S_CONTROLPLANE_FORCE:-}" = 1 ] || find_binary "$b"
  if [ -n "$hit" ]; then
    ln -sfn "$hit" "$out/$b"
    found+=("$b ($hit)")
  else
    build+=("$b")
  fi
done
list() { local s="" x; for x in "$@"; do s="${s:+$s, }$x"; done; echo "${s:-none}"; }
echo "controlplane: found $(list "${found[@]}"); building $(list "${build[@]}")"
for r in "${rejected[@]}"; do echo "$r"; done
todo="${build[*]}"
[ -n "$todo" ] || { echo "controlplane: $out ready (nothing to build)"; exit 0; }

minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
ld="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld="$ld -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
cd "$here/build"
# go.sum is committed: -mod=readonly makes a drifted module graph an error rather than a silent update.
export CGO_ENABLED=0 GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false"
total=$(date +%s)
for b in $todo; do
  start=$(date +%s)
  echo "controlplane: building $b ($K8S_VERSION set; first run only)"
  go build -trimpath -ldflags "$ld" -o "$out/$b.tmp" "./$b"
  mv -f "$out/$b.tmp" "$out/$b"
  echo "controlplane: built $b in $(( $(date +%s) - start ))s"
done
echo "controlplane: $out ready in $(( $(date +%s) - total ))s"
