#!/usr/bin/env bash
# kind cluster for a laptop with Docker (`make kind-up` / `make kind-down`). It cannot run where no
# Docker engine runs; there, `make k8s-up` is the way (hack/k8s/README.md).
#
#   hack/k8s/kind.sh up     create cluster "rankq" ($KIND_NODE_IMAGE), load $KIND_IMAGE
#   hack/k8s/kind.sh down   delete it
#
# The kubeconfig goes to $K8S_STATE_DIR/kind.kubeconfig, so ~/.kube/config is left alone.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER="${KIND_CLUSTER:-rankq}"
IMAGE="${KIND_IMAGE:-rankq:dev}"
KCFG="$K8S_STATE_DIR/kind.kubeconfig"

command -v docker >/dev/null && docker info >/dev/null 2>&1 \
    || k8s_die "kind needs a running Docker engine; without one use 'make k8s-up' (local processes)"

kind_bin() {
    if command -v kind >/dev/null; then command -v kind; return; fi
    if [ ! -x "$K8S_CACHE_ROOT/kind-$KIND_VERSION/kind" ]; then
        k8s_have_go || k8s_die "kind not found and no Go toolchain to build it (go install sigs.k8s.io/kind@$KIND_VERSION)"
        k8s_log "go install sigs.k8s.io/kind@$KIND_VERSION"
        GOBIN="$K8S_CACHE_ROOT/kind-$KIND_VERSION" go install "sigs.k8s.io/kind@$KIND_VERSION"
    fi
    printf '%s\n' "$K8S_CACHE_ROOT/kind-$KIND_VERSION/kind"
}
KIND="$(kind_bin)"

case "${1:-}" in
up)
    mkdir -p "$K8S_STATE_DIR"
    if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
        k8s_log "kind cluster $CLUSTER exists"
        "$KIND" get kubeconfig --name "$CLUSTER" > "$KCFG"
    else
        "$KIND" create cluster --name "$CLUSTER" --image "$KIND_NODE_IMAGE" \
            --kubeconfig "$KCFG" --wait 120s
    fi
    if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
        if [ -f "$REPO_ROOT/Dockerfile" ]; then
            k8s_log "building $IMAGE from Dockerfile"
            docker build -t "$IMAGE" "$REPO_ROOT"
        else
            k8s_die "image $IMAGE not found and no Dockerfile to build it; set KIND_IMAGE"
        fi
    fi
    "$KIND" load docker-image "$IMAGE" --name "$CLUSTER"
    k8s_log "kind cluster $CLUSTER ready with $IMAGE loaded: export KUBECONFIG=$KCFG"
    ;;
down)
    "$KIND" delete cluster --name "$CLUSTER"
    rm -f "$KCFG"
    ;;
*)
    echo "usage: $0 up|down" >&2; exit 2 ;;
esac
