#!/usr/bin/env bash
# Start a local Kubernetes control plane as background processes (`make k8s-up`).
#
#   etcd -> kube-apiserver -> kube-controller-manager, kube-scheduler -> kwok + fake nodes
#
# Idempotent: components already running (pidfile + matching executable) are left alone, missing
# ones are started, and the script returns once the API is ready, the controllers and scheduler
# are healthy, the fake nodes are Ready and the default ServiceAccount exists.
# State lives in $K8S_STATE_DIR (default .k8s/): bin/ links, pki/, etcd/, logs/, run/, kubeconfig.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$K8S_HACK_DIR/proc.sh"

t_start=$(date +%s.%N)
elapsed() { awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

NODES="${RANKQ_K8S_NODES:-3}"
READY_TIMEOUT="${RANKQ_K8S_READY_TIMEOUT:-120}"
# Feature gates for kube-apiserver and kube-controller-manager, e.g. HPAScaleToZero=true (lets an
# HPA have minReplicas 0; alpha in 1.34). Empty: the release's defaults.
feature_gates=()
if [ -n "${RANKQ_K8S_FEATURE_GATES:-}" ]; then feature_gates=(--feature-gates="$RANKQ_K8S_FEATURE_GATES"); fi

for cmd in curl openssl setsid flock base64; do
    command -v "$cmd" >/dev/null || k8s_die "$cmd not found (Debian: apt-get install curl openssl util-linux coreutils)"
done

# RANKQ_K8S_REAL_NODE=auto (make test): the real node where this machine can run it.
real_node_auto=0
if [ "${RANKQ_K8S_REAL_NODE:-}" = auto ]; then real_node_auto=1; k8s_real_node_resolve; fi

# --- binaries --------------------------------------------------------------------------------
missing=()
for b in "${K8S_ALL_BINARIES[@]}"; do k8s_find_binary "$b" >/dev/null || missing+=("$b"); done
if [ "${#missing[@]}" -gt 0 ]; then
    if k8s_have_go; then
        "$K8S_HACK_DIR/build.sh"
    else
        for b in etcd kube-apiserver kubectl; do
            k8s_find_binary "$b" >/dev/null || k8s_die "no $b: set KUBEBUILDER_ASSETS to a directory with etcd, kube-apiserver and kubectl, or install Go so hack/k8s/build.sh can build them"
        done
        k8s_log "no Go toolchain: starting without ${missing[*]} (API only, like envtest: no controllers, scheduler or nodes)"
    fi
fi

# One up/down at a time per state dir: a second caller waits, then finds everything running.
mkdir -p "$K8S_STATE_DIR"
exec 8>"$K8S_STATE_DIR/.lock"
flock 8
mkdir -p "$K8S_STATE_DIR"/{bin,logs,run,etcd,pki}
# Why there is no real node (auto), for tests/k8s/test_real_node_e2e.py's skip message.
rm -f "$K8S_STATE_DIR/run/real-node-skipped" "$K8S_STATE_DIR/run/real-node-failed"
[ -z "$K8S_REAL_NODE_SKIP" ] || printf '%s\n' "$K8S_REAL_NODE_SKIP" > "$K8S_STATE_DIR/run/real-node-skipped"
chmod 0700 "$K8S_STATE_DIR/etcd"
for b in "${K8S_ALL_BINARIES[@]}"; do
    if p="$(k8s_find_binary "$b")"; then ln -sfn "$p" "$K8S_STATE_DIR/bin/$b"; else rm -f "$K8S_STATE_DIR/bin/$b"; fi
done
have() { [ -x "$K8S_STATE_DIR/bin/$1" ]; }
KUBECTL="$K8S_STATE_DIR/bin/kubectl"

# --- certificates and kubeconfigs --------------------------------------------------------------
"$K8S_HACK_DIR/pki.sh"
PKI="$K8S_STATE_DIR/pki"
SERVER="https://127.0.0.1:$K8S_APISERVER_PORT"

write_kubeconfig() { # write_kubeconfig FILE CERTNAME
    local file="$1" name="$2" tmp
    tmp="$(mktemp "$file.XXXXXX")"
    cat > "$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: rankq-local
  cluster:
    server: $SERVER
    certificate-authority-data: $(base64 -w0 < "$PKI/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 < "$PKI/$name.crt")
    client-key-data: $(base64 -w0 < "$PKI/$name.key")
contexts:
- name: rankq-local
  context:
    cluster: rankq-local
    user: $name
current-context: rankq-local
EOF
    chmod 0600 "$tmp"
    mv -f "$tmp" "$file"
}
write_kubeconfig "$K8S_STATE_DIR/kubeconfig" admin
for c in kube-controller-manager kube-scheduler kwok; do write_kubeconfig "$PKI/$c.kubeconfig" "$c"; done
if k8s_real_node; then
    for c in kubelet-client kube-proxy coredns; do write_kubeconfig "$PKI/$c.kubeconfig" "$c"; done
fi
cat > "$K8S_STATE_DIR/env" <<EOF
# source .k8s/env  -> kubectl and helm of the local control plane on PATH, KUBECONFIG set
export KUBECONFIG="$K8S_STATE_DIR/kubeconfig"
export PATH="$K8S_STATE_DIR/bin:\$PATH"
EOF

# --- etcd ----------------------------------------------------------------------------------
ETCD_URL="http://127.0.0.1:$K8S_ETCD_CLIENT_PORT"
proc_start etcd "$K8S_ETCD_CLIENT_PORT" "$K8S_STATE_DIR/bin/etcd" \
    --name=rankq-local \
    --data-dir="$K8S_STATE_DIR/etcd" \
    --listen-client-urls="$ETCD_URL" \
    --advertise-client-urls="$ETCD_URL" \
    --listen-peer-urls="http://127.0.0.1:$K8S_ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$K8S_ETCD_PEER_PORT" \
    --initial-cluster="rankq-local=http://127.0.0.1:$K8S_ETCD_PEER_PORT" \
    --unsafe-no-fsync \
    --log-level=warn
proc_wait etcd 30 curl -fsS -o /dev/null "$ETCD_URL/health"

# --- kube-apiserver ------------------------------------------------------------------------
# With the real node (docs/real-node.md) pods reach the apiserver at the node address through the
# `kubernetes` Service, so it listens there too and keeps that Service's endpoints.
apiserver_net=(--bind-address="$K8S_BIND_ADDRESS" --advertise-address="$K8S_BIND_ADDRESS" --endpoint-reconciler-type=none)
if k8s_real_node; then
    apiserver_net=(--bind-address=0.0.0.0 --advertise-address="$K8S_NODE_IP" --endpoint-reconciler-type=lease
        --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt"
        --kubelet-client-key="$PKI/apiserver-kubelet-client.key"
        --kubelet-certificate-authority="$PKI/ca.crt" --kubelet-preferred-address-types=InternalIP)
    "$K8S_HACK_DIR/node.sh" address
fi
proc_start kube-apiserver "$K8S_APISERVER_PORT" "$K8S_STATE_DIR/bin/kube-apiserver" \
    --etcd-servers="$ETCD_URL" \
    "${apiserver_net[@]}" \
    --secure-port="$K8S_APISERVER_PORT" \
    --tls-cert-file="$PKI/apiserver.crt" \
    --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true \
    --service-cluster-ip-range="$K8S_SERVICE_CIDR" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --api-audiences=https://kubernetes.default.svc.cluster.local \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
    --proxy-client-key-file="$PKI/front-proxy-client.key" \
    ${feature_gates[@]+"${feature_gates[@]}"} \
    --profiling=false
api_ready() {
    curl -fsS -o /dev/null --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
        "$SERVER/readyz"
}
proc_wait kube-apiserver "$READY_TIMEOUT" api_ready
k8s_log "API ready at $SERVER after $(elapsed)s"

# --- controllers and scheduler ----------------------------------------------------------------
if have kube-controller-manager; then
    proc_start kube-controller-manager "$K8S_KCM_PORT" "$K8S_STATE_DIR/bin/kube-controller-manager" \
        --kubeconfig="$PKI/kube-controller-manager.kubeconfig" \
        --authentication-kubeconfig="$PKI/kube-controller-manager.kubeconfig" \
        --authorization-kubeconfig="$PKI/kube-controller-manager.kubeconfig" \
        --bind-address=127.0.0.1 \
        --secure-port="$K8S_KCM_PORT" \
        --cert-dir="$K8S_STATE_DIR/run/kube-controller-manager-certs" \
        --service-account-private-key-file="$PKI/sa.key" \
        --root-ca-file="$PKI/ca.crt" \
        --cluster-signing-cert-file="$PKI/ca.crt" \
        --cluster-signing-key-file="$PKI/ca.key" \
        --use-service-account-credentials=true \
        --service-cluster-ip-range="$K8S_SERVICE_CIDR" \
        --allocate-node-cidrs=true \
        --cluster-cidr="$K8S_POD_CIDR" \
        --node-cidr-mask-size=24 \
        --leader-elect=false \
        --controllers='*,bootstrapsigner,tokencleaner' \
        --horizontal-pod-autoscaler-sync-period=5s \
        ${feature_gates[@]+"${feature_gates[@]}"} \
        --profiling=false
fi
if have kube-scheduler; then
    proc_start kube-scheduler "$K8S_SCHED_PORT" "$K8S_STATE_DIR/bin/kube-scheduler" \
        --kubeconfig="$PKI/kube-scheduler.kubeconfig" \
        --authentication-kubeconfig="$PKI/kube-scheduler.kubeconfig" \
        --authorization-kubeconfig="$PKI/kube-scheduler.kubeconfig" \
        --bind-address=127.0.0.1 \
        --secure-port="$K8S_SCHED_PORT" \
        --cert-dir="$K8S_STATE_DIR/run/kube-scheduler-certs" \
        --leader-elect=false \
        --profiling=false
fi
if have kwok; then
    cat > "$K8S_STATE_DIR/run/kwok.yaml" <<EOF
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options: {}
EOF
    # kwok holds a Lease per node; a restarted kwok takes the nodes over only once the old
    # process's leases expire, hence a short lease (kubelet's default is 40 s).
    proc_start kwok "" "$K8S_STATE_DIR/bin/kwok" \
        --kubeconfig="$PKI/kwok.kubeconfig" \
        --config="$K8S_STATE_DIR/run/kwok.yaml" \
        --manage-all-nodes=false \
        --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
        --cidr=10.244.0.1/16 \
        --node-ip=10.240.0.1 \
        --node-lease-duration-seconds=20
    nodes_yaml="$K8S_STATE_DIR/run/nodes.yaml"
    : > "$nodes_yaml"
    for i in $(seq 0 $((NODES - 1))); do
        cat >> "$nodes_yaml" <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    node.alpha.kubernetes.io/ttl: "0"
    kwok.x-k8s.io/node: fake
  labels:
    type: kwok
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: ""
    topology.kubernetes.io/zone: zone-$((i % 3))
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
  addresses: [{type: InternalIP, address: 10.240.0.$((i + 10))}, {type: Hostname, address: kwok-node-$i}]
  nodeInfo: {architecture: amd64, operatingSystem: linux, kubeletVersion: fake, kubeProxyVersion: fake}
EOF
    done
    "$KUBECTL" --kubeconfig="$K8S_STATE_DIR/kubeconfig" apply -f "$nodes_yaml" >/dev/null
fi

# --- wait until the cluster does what tests expect ---------------------------------------------
kc() { "$KUBECTL" --kubeconfig="$K8S_STATE_DIR/kubeconfig" --request-timeout=5s "$@"; }
healthz() { curl -fsSk -o /dev/null --max-time 5 "https://127.0.0.1:$1/healthz"; }
if have kube-controller-manager; then
    proc_wait kube-controller-manager 60 healthz "$K8S_KCM_PORT"
    default_sa() { kc get serviceaccount default -n default >/dev/null 2>&1; }
    proc_wait kube-controller-manager 60 default_sa
fi
have kube-scheduler && proc_wait kube-scheduler 60 healthz "$K8S_SCHED_PORT"
if have kwok; then
    nodes_ready() {
        local n
        n="$(kc get nodes -l type=kwok -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | grep -c '^True$' || true)"
        [ "$n" -ge "$NODES" ]
    }
    proc_wait kwok 60 nodes_ready
fi
kwok_pid="$(proc_pid kwok 2>/dev/null || true)"
if have kwok && have kube-controller-manager && have kube-scheduler \
    && [ "$(cat "$K8S_STATE_DIR/run/kwok-pools-warm" 2>/dev/null)" != "$kwok_pid" ]; then
    # kwok (v0.7) creates a node's pod IP pool on first use without a lock, so pods that land on a
    # fresh node at the same moment can get the same IP. One pinned pod per node, created before
    # any test runs, creates the pools; the pods are deleted right away.
    nodes_have_cidrs() {
        [ "$(kc get nodes -l type=kwok -o jsonpath='{range .items[*]}{.spec.podCIDR}{"\n"}{end}' 2>/dev/null | grep -c .)" -ge "$NODES" ]
    }
    proc_wait kube-controller-manager 60 nodes_have_cidrs
    kube_system_sa() { kc get serviceaccount default -n kube-system >/dev/null 2>&1; }
    proc_wait kube-controller-manager 60 kube_system_sa
    warm_yaml="$K8S_STATE_DIR/run/warmup.yaml"
    : > "$warm_yaml"
    for i in $(seq 0 $((NODES - 1))); do
        cat >> "$warm_yaml" <<EOF
---
apiVersion: v1
kind: Pod
metadata: {name: kwok-ip-pool-warmup-$i, namespace: kube-system, labels: {app: kwok-ip-pool-warmup}}
spec:
  nodeName: kwok-node-$i
  automountServiceAccountToken: false
  tolerations: [{operator: Exists}]
  containers: [{name: pause, image: registry.k8s.io/pause:3.10}]
EOF
    done
    kc apply -f "$warm_yaml" >/dev/null
    warm_ips() {
        [ "$(kc get pods -n kube-system -l app=kwok-ip-pool-warmup -o jsonpath='{range .items[*]}{.status.podIP}{"\n"}{end}' | grep -c .)" -ge "$NODES" ]
    }
    proc_wait kwok 60 warm_ips
    kc delete pods -n kube-system -l app=kwok-ip-pool-warmup --wait=false >/dev/null
    echo "$kwok_pid" > "$K8S_STATE_DIR/run/kwok-pools-warm"
fi

if k8s_real_node; then
    if [ "$real_node_auto" = 0 ]; then
        "$K8S_HACK_DIR/node.sh" up
    else
        node_out="$K8S_STATE_DIR/run/real-node-up.log"
        node_rc=0
        "$K8S_HACK_DIR/node.sh" up 2> "$node_out" || node_rc=$?
        if [ "$node_rc" = 0 ]; then
            cat "$node_out" >&2
        elif [ "$node_rc" = 3 ]; then # another checkout's node came first: like a failed check
            cat "$node_out" >&2
            sed 's/^\[k8s\] //' "$node_out" > "$K8S_STATE_DIR/run/real-node-skipped"
            RANKQ_K8S_REAL_NODE=0
        else
            # The checks passed, yet the node did not come up: the control plane stays usable for
            # the other tests, and the real-node test fails with this output.
            cat "$node_out" >&2
            mv -f "$node_out" "$K8S_STATE_DIR/run/real-node-failed"
            k8s_log "the real node did not start; continuing without it (see $K8S_STATE_DIR/run/real-node-failed)"
            "$K8S_HACK_DIR/node.sh" down || true
            RANKQ_K8S_REAL_NODE=0
        fi
    fi
fi

components="etcd kube-apiserver"
for c in kube-controller-manager kube-scheduler kwok; do have "$c" && components+=" $c"; done
k8s_real_node && components+=" containerd kubelet kube-proxy coredns"
echo "$components" > "$K8S_STATE_DIR/run/components"
k8s_log "control plane up in $(elapsed)s: $components"
k8s_log "export KUBECONFIG=$K8S_STATE_DIR/kubeconfig   (or: source $K8S_STATE_DIR/env)"
