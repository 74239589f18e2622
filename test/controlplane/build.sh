#!/usr/bin/env bash
# Builds etcd, kube-apiserver and kube-controller-manager from Go modules (prebuilt downloads such as
# envtest's, kind and Docker images are not available everywhere this must run) into a cache keyed by
# version. Idempotent: a complete cache is left alone. Cold: ~10 minutes on 2 cores; warm: nothing.
#
#   COUCHDB_CONTROLLER_CACHE  cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/couchdb-controller)
#   K8S_CONTROLPLANE_FORCE=1  rebuild even if the binaries exist
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
