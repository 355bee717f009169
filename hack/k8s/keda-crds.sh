#!/usr/bin/env bash
# Print a directory holding KEDA's CRDs (ScaledObject, TriggerAuthentication) at KEDA_VERSION.
#
#   kubectl apply --server-side -f "$(hack/k8s/keda-crds.sh)"
#
# The files come from KEDA's Go module (config/crd/bases) through the Go module proxy, once; they
# are kept in the build cache ($K8S_CACHE_ROOT/keda-<version>/crds), never in the repository.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

out="$K8S_CACHE_ROOT/keda-$KEDA_VERSION/crds"
crds=(keda.sh_scaledobjects.yaml keda.sh_triggerauthentications.yaml)
have_all() { for f in "${crds[@]}"; do [ -s "$out/$f" ] || return 1; done; }
if ! have_all; then
    k8s_have_go || k8s_die "KEDA's CRDs are not cached in $out and there is no Go toolchain to fetch them"
    export GOMODCACHE="$K8S_CACHE_ROOT/gomod" GOFLAGS=-mod=mod
    mkdir -p "$K8S_CACHE_ROOT"
    # Outside any module, so nothing here needs a go.mod; -json names the unpacked directory.
    dir="$(cd "$K8S_CACHE_ROOT" && go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    [ -n "$dir" ] && [ -d "$dir/config/crd/bases" ] || k8s_die "go mod download github.com/kedacore/keda/v2@$KEDA_VERSION gave no config/crd/bases"
    tmp="$(mktemp -d "$K8S_CACHE_ROOT/keda-crds.XXXXXX")"
    for f in "${crds[@]}"; do cp "$dir/config/crd/bases/$f" "$tmp/$f"; done
    chmod 0644 "$tmp"/*.yaml
    mkdir -p "$(dirname "$out")"
    rm -rf "$out" && mv "$tmp" "$out"
    k8s_log "KEDA $KEDA_VERSION CRDs in $out"
fi
printf '%s\n' "$out"
