#!/usr/bin/env bash
# Run by `make test` before pytest: build the control-plane binaries the Kubernetes tests need,
# saying up front that the first build is long and how to skip it, with progress while it runs.
# Without Go (and without KUBEBUILDER_ASSETS) there is nothing to build: the k8s tests skip.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

missing=()
for b in "${K8S_ALL_BINARIES[@]}"; do
    k8s_find_binary "$b" >/dev/null || missing+=("$b")
done
[ "${#missing[@]}" = 0 ] && exit 0
if ! k8s_have_go; then
    k8s_log "no Go toolchain: the Kubernetes tests will be skipped (hack/k8s/README.md says how to enable them)"
    exit 0
fi
k8s_log "first run on this machine: building ${missing[*]} from Go modules into $K8S_BUILD_BIN"
k8s_log "this takes 15-20 minutes on 2 cores, once; 'make test-quick' runs everything but the Kubernetes tier"
exec bash "$K8S_HACK_DIR/build.sh"
