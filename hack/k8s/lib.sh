# Shared settings for the local control plane scripts. Sourced, never executed.
# shellcheck shell=bash disable=SC2034  # variables for the scripts that source this file

K8S_HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$K8S_HACK_DIR/../.." && pwd)"

# versions.env holds plain KEY=value lines.
while IFS='=' read -r _k _v; do
    case "$_k" in ''|\#*) continue ;; esac
    # An explicit environment override wins (e.g. KUBERNETES_VERSION=v1.34.3 make k8s-up).
    if [ -z "${!_k:-}" ]; then printf -v "$_k" '%s' "$_v"; fi
    export "${_k?}"
done < "$K8S_HACK_DIR/versions.env"
unset _k _v

# Built binaries live outside the repo, one directory per Kubernetes version.
K8S_CACHE_ROOT="${RANKQ_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rankq}"
K8S_BUILD_DIR="$K8S_CACHE_ROOT/k8s-$KUBERNETES_VERSION"
K8S_BUILD_BIN="$K8S_BUILD_DIR/bin"

# Runtime state (certs, data, logs, pidfiles, kubeconfig, bin links) of one control plane.
K8S_STATE_DIR="${RANKQ_K8S_DIR:-$REPO_ROOT/.k8s}"

# Loopback ports. Override with the environment when two checkouts run side by side.
K8S_APISERVER_PORT="${RANKQ_K8S_APISERVER_PORT:-16443}"
K8S_ETCD_CLIENT_PORT="${RANKQ_K8S_ETCD_CLIENT_PORT:-12379}"
K8S_ETCD_PEER_PORT="${RANKQ_K8S_ETCD_PEER_PORT:-12380}"
K8S_KCM_PORT="${RANKQ_K8S_KCM_PORT:-10257}"
K8S_SCHED_PORT="${RANKQ_K8S_SCHED_PORT:-10259}"
K8S_BIND_ADDRESS="${RANKQ_K8S_BIND_ADDRESS:-127.0.0.1}"

K8S_SERVICE_CIDR="10.96.0.0/16"
K8S_CLUSTER_IP_KUBERNETES="10.96.0.1"
K8S_POD_CIDR="10.244.0.0/16"

# Every binary the harness may run, and the subset envtest's KUBEBUILDER_ASSETS provides.
K8S_ALL_BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm)
# The real node's binaries (RANKQ_K8S_REAL_NODE=1, docs/real-node.md), built only when asked for.
K8S_NODE_BINARIES=(kubelet kube-proxy coredns)
# RANKQ_K8S_REAL_NODE: 1 = run the real node (fail where it cannot run), auto = run it where this
# machine can (what `make test` sets; k8s_real_node_resolve decides), anything else = no real node.
k8s_real_node() { [ "${RANKQ_K8S_REAL_NODE:-0}" = 1 ]; }
# Debian packages the real node and `make image` need, and a command each provides.
K8S_NODE_PACKAGES=(containerd:containerd runc:runc containernetworking-plugins:/usr/lib/cni/bridge
    nftables:nft iproute2:ip mmdebstrap:mmdebstrap util-linux:unshare)
# The real node's address: on the loopback device, so it never leaves the machine; pods reach the
# apiserver, the kubelet and CoreDNS there.
K8S_NODE_NAME="${RANKQ_K8S_NODE_NAME:-rankq-node}"
K8S_NODE_IP="${RANKQ_K8S_NODE_IP:-10.239.0.1}"
K8S_DNS_DOMAIN=cluster.local
if k8s_real_node; then K8S_ALL_BINARIES+=("${K8S_NODE_BINARIES[@]}"); fi
# Machine-wide: the one real node's owner (its state dir). Node address, bridge and nftables table
# are global, so a second checkout must not start another one.
K8S_NODE_OWNER_FILE=/run/rankq-real-node

# k8s_real_node_resolve: RANKQ_K8S_REAL_NODE=auto becomes 1 where `node.sh check` passes, else 0
# with the reason in K8S_REAL_NODE_SKIP. Exported, so scripts run from here see the decision.
K8S_REAL_NODE_SKIP=""
k8s_real_node_resolve() {
    [ "${RANKQ_K8S_REAL_NODE:-}" = auto ] || return 0
    if K8S_REAL_NODE_SKIP="$(bash "$K8S_HACK_DIR/node.sh" check 2>&1)"; then
        RANKQ_K8S_REAL_NODE=1
        K8S_ALL_BINARIES+=("${K8S_NODE_BINARIES[@]}")
    else
        RANKQ_K8S_REAL_NODE=0
    fi
    export RANKQ_K8S_REAL_NODE
}

k8s_log() { printf '[k8s] %s\n' "$*" >&2; }
k8s_die() { printf '[k8s] error: %s\n' "$*" >&2; exit 1; }

# k8s_find_binary NAME -> path on stdout, or nothing. KUBEBUILDER_ASSETS wins, then the build cache.
k8s_find_binary() {
    local name="$1"
    if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/$name" ]; then
        printf '%s\n' "$KUBEBUILDER_ASSETS/$name"; return 0
    fi
    if [ -x "$K8S_BUILD_BIN/$name" ]; then
        printf '%s\n' "$K8S_BUILD_BIN/$name"; return 0
    fi
    return 1
}

k8s_have_go() { command -v go >/dev/null 2>&1; }

# k8s_with_progress WHAT CMD... runs CMD and says every minute that WHAT is still going, so a
# 15-minute compile never looks like a hang. Returns CMD's exit status.
k8s_with_progress() {
    local what="$1"; shift
    local started; started=$(date +%s)
    "$@" &
    local pid=$! rc=0
    while kill -0 "$pid" 2>/dev/null; do
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        kill -0 "$pid" 2>/dev/null && k8s_log "still building $what ($(( ($(date +%s) - started) / 60 )) min so far)"
    done
    wait "$pid" || rc=$?
    return "$rc"
}
