#!/usr/bin/env bash
# Run by `make test` before pytest: build the control-plane binaries the Kubernetes tests need,
# saying up front that the first build is long and how to skip it, with progress while it runs.
# Without Go (and without KUBEBUILDER_ASSETS) there is nothing to build: the k8s tests skip.
#
# With RANKQ_K8S_REAL_NODE=auto (what `make test` sets) or 1, also what the real node needs
# (docs/real-node.md): its Debian packages (apt-get, as root), kubelet, kube-proxy and CoreDNS, and
# the RankQ image under two tags (the second for the rolling image change). The image builds while
# Go compiles. Where the machine cannot run the node, `node.sh check` says why and the real-node
# tests skip with that reason.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

t_prepare=$(date +%s)
image_pid=""
if [ "${RANKQ_K8S_REAL_NODE:-}" = auto ] || k8s_real_node; then
    bash "$K8S_HACK_DIR/node.sh" install
    k8s_real_node_resolve
    if ! k8s_real_node; then
        k8s_log "no real node on this machine (tests/k8s/test_real_node_e2e.py will skip):"
        printf '%s\n' "$K8S_REAL_NODE_SKIP" | sed 's/^/[k8s]   /' >&2
    else
        py="$REPO_ROOT/.venv/bin/python"
        [ -x "$py" ] || py="${PYTHON:-python3}"
        version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO_ROOT/pyproject.toml" | head -n1)"
        tag="${RANKQ_IMAGE_TAG:-$version}"
        image_log="$K8S_CACHE_ROOT/image-build.log"
        mkdir -p "$K8S_CACHE_ROOT"
        k8s_log "real node: building the RankQ image rankq:$tag (+ rankq:$tag-next) in the background if its sources changed; log: $image_log"
        PYTHON="$py" RANKQ_IMAGE_TAG="$tag" bash "$K8S_HACK_DIR/image.sh" --if-changed --also-tag "$tag-next" \
            > "$image_log" 2>&1 &
        image_pid=$!
    fi
fi

missing=()
for b in "${K8S_ALL_BINARIES[@]}"; do
    k8s_find_binary "$b" >/dev/null || missing+=("$b")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if ! k8s_have_go; then
        k8s_log "no Go toolchain: the Kubernetes tests will be skipped (hack/k8s/README.md says how to enable them)"
    else
        k8s_log "building ${missing[*]} from Go modules into $K8S_BUILD_BIN"
        if [[ " ${missing[*]} " == *" kube-apiserver "* ]]; then
            k8s_log "first run on this machine: this takes 15-20 minutes on 2 cores, once; 'make test-quick' runs everything but the Kubernetes tier"
        fi
        bash "$K8S_HACK_DIR/build.sh"
    fi
fi

if [ -n "$image_pid" ]; then
    t_wait=$(date +%s)
    while kill -0 "$image_pid" 2>/dev/null; do
        for _ in $(seq 60); do kill -0 "$image_pid" 2>/dev/null || break; sleep 1; done
        kill -0 "$image_pid" 2>/dev/null && k8s_log "still building the RankQ image ($(( ($(date +%s) - t_wait) / 60 )) min after the Go build; log: $image_log)"
    done
    wait "$image_pid" && rc=0 || rc=$?
    grep '^\[image\]' "$image_log" | tail -n 4 >&2 || true
    if [ "$rc" != 0 ]; then
        # The rest of the suite still runs; the real-node test fails with the build's error.
        tail -n 20 "$image_log" >&2
        k8s_log "the image build failed (rc $rc); tests/k8s/test_real_node_e2e.py will fail"
    fi
    k8s_log "image ready $(( $(date +%s) - t_wait ))s after the Go build"
fi
if [ "${RANKQ_K8S_REAL_NODE:-0}" = 1 ]; then
    k8s_log "prepared in $(( $(date +%s) - t_prepare ))s (real node: packages, kubelet/kube-proxy/CoreDNS, image)"
fi
