#!/usr/bin/env bash
# The real node of the local cluster (RANKQ_K8S_REAL_NODE=1 make k8s-up; docs/real-node.md):
# containerd + runc + CNI plugins from Debian, kubelet and kube-proxy (nftables) and CoreDNS built
# from Go modules, a locally built pause image, images imported into containerd, never pulled.
#
#   node.sh address   put the node address on the loopback device (before the apiserver starts)
#   node.sh up        start containerd, kubelet, kube-proxy, CoreDNS; wait until the node is Ready
#   node.sh down      stop them, remove the pods' containers, mounts, rules and the address
#   node.sh pvs       make released PersistentVolumes available again (wiped)
#   node.sh images    (re)import the pause image and every rankq-*.oci.tar of the image cache
#   node.sh check     can this machine run the node? prints what is missing, exit 1 if anything is
#   node.sh install   apt-get install the Debian packages the node and `make image` need (root)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$K8S_HACK_DIR/proc.sh"

NODE_DIR="$K8S_STATE_DIR/node"
PKI="$K8S_STATE_DIR/pki"
SOCK="$K8S_STATE_DIR/run/containerd.sock"
# containerd's state dir holds shim sockets (short path limit) and must be on a tmpfs.
CTRD_STATE="/run/rankq-containerd-$(printf '%s' "$K8S_STATE_DIR" | sha1sum | cut -c1-8)"
CNI_BRIDGE=rankq-cni0
IMAGE_DIR="${RANKQ_IMAGE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rankq/image}"
PAUSE_IMAGE="rankq.local/pause:1"
PV_COUNT="${RANKQ_K8S_NODE_PVS:-6}"
KC="$K8S_STATE_DIR/bin/kubectl --kubeconfig=$K8S_STATE_DIR/kubeconfig --request-timeout=10s"
ctr_() { ctr --address "$SOCK" -n k8s.io "$@"; }

has_cap_sys_resource() { # CAP_SYS_RESOURCE (bit 24) in our effective set
    local eff; eff="$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/self/status)"
    (( (16#$eff >> 24) & 1 ))
}

need() {
    local missing=() c
    for c in containerd containerd-shim-runc-v2 runc ctr nft ip; do command -v "$c" >/dev/null || missing+=("$c"); done
    [ -x /usr/lib/cni/bridge ] || missing+=(cni-plugins)
    [ "${#missing[@]}" = 0 ] || k8s_die "the real node needs ${missing[*]} (Debian: apt-get install containerd runc containernetworking-plugins nftables iproute2)"
    [ "$(id -u)" = 0 ] || k8s_die "the real node needs root (containers, mounts, network)"
    for b in kubelet kube-proxy coredns; do
        [ -x "$K8S_STATE_DIR/bin/$b" ] || k8s_die "no $b: RANKQ_K8S_REAL_NODE=1 bash hack/k8s/build.sh"
    done
}

missing_packages() { # Debian packages (of K8S_NODE_PACKAGES) whose command is not here
    local entry pkg cmd
    for entry in "${K8S_NODE_PACKAGES[@]}"; do
        pkg="${entry%%:*}"; cmd="${entry#*:}"
        if [[ "$cmd" == /* ]]; then [ -x "$cmd" ] || echo "$pkg"; else command -v "$cmd" >/dev/null || echo "$pkg"; fi
    done
}

cmd_install() {
    local pkgs; pkgs="$(missing_packages | xargs)"
    [ -n "$pkgs" ] || return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        k8s_log "the real node needs $pkgs (Debian: apt-get install $pkgs); not root or no apt-get, not installing"
        return 0
    fi
    k8s_log "apt-get install $pkgs (the real node and make image)"
    local t0; t0=$(date +%s)
    # shellcheck disable=SC2086  # a word list
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs; } >&2 \
        || k8s_log "apt-get install $pkgs failed"
    k8s_log "packages installed in $(( $(date +%s) - t0 ))s"
}

# Each probe below is what one part of the node does first; a machine that fails one cannot run
# pods, and the message names the kernel feature, mount or permission and the command that failed.
cmd_check() {
    local why=() c pkgs owner
    [ "$(uname -s)" = Linux ] || { echo "not Linux ($(uname -s))"; return 1; }
    if [ "$(id -u)" != 0 ]; then
        echo "not root (uid $(id -u)): containers, mounts, cgroups and the pod network need root"; return 1
    fi
    pkgs="$(missing_packages | xargs)"
    [ -z "$pkgs" ] || why+=("missing Debian packages: $pkgs (apt-get install $pkgs)")
    for c in kubelet kube-proxy coredns; do
        k8s_find_binary "$c" >/dev/null || k8s_have_go || why+=("no $c binary and no Go toolchain to build it")
    done
    [ -f "$K8S_BUILD_DIR/pause.oci.tar" ] || k8s_have_go || why+=("no Go toolchain to build the pause image")
    if [ -f "$K8S_NODE_OWNER_FILE" ] && owner="$(cat "$K8S_NODE_OWNER_FILE")" && [ "$owner" != "$K8S_STATE_DIR" ] \
        && [ -f "$owner/run/node" ]; then
        why+=("a real node of $owner runs on this machine ($K8S_NODE_OWNER_FILE); one per machine: node address $K8S_NODE_IP, bridge $CNI_BRIDGE and nftables table kube-proxy are global")
    fi
    # cgroups: the kubelet (cgroupfs driver) creates kubepods/ under cpu, cpuset, memory and pids.
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        for c in cpu cpuset memory pids; do
            grep -qw "$c" /sys/fs/cgroup/cgroup.controllers || why+=("cgroup v2 without the $c controller (/sys/fs/cgroup/cgroup.controllers: $(cat /sys/fs/cgroup/cgroup.controllers))")
        done
        probe_cgroup /sys/fs/cgroup || why+=("cannot create a cgroup: mkdir /sys/fs/cgroup/rankq-probe failed (read-only cgroup mount)")
    else
        for c in cpu cpuacct cpuset memory pids; do
            local dir
            dir="$(awk -v c="$c" '$3 == "cgroup" && ("," $4 ",") ~ ("," c ",") { print $2; exit }' /proc/mounts)"
            if [ -z "$dir" ]; then
                why+=("no cgroup v1 hierarchy with the $c controller mounted (grep cgroup /proc/mounts)")
            elif ! probe_cgroup "$dir"; then
                why+=("cannot create a cgroup: mkdir $dir/rankq-probe failed (read-only cgroup mount)")
            fi
        done
    fi
    grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
    probe_overlay || why+=("overlayfs mount fails under $K8S_STATE_DIR (containerd's overlayfs snapshotter): mount -t overlay")
    unshare --net true 2>/dev/null || why+=("cannot create a network namespace: unshare --net true failed")
    unshare --mount --pid --fork true 2>/dev/null || why+=("cannot create mount and PID namespaces: unshare --mount --pid --fork true failed")
    if ip link add rankq-probe0 type veth peer name rankq-probe1 2>/dev/null; then
        ip link del rankq-probe0 2>/dev/null || true
    else
        why+=("cannot create a veth pair (the CNI bridge plugin): ip link add rankq-probe0 type veth peer name rankq-probe1")
    fi
    if ! ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then
        if ip link add rankq-probe0 type bridge 2>/dev/null; then ip link del rankq-probe0 2>/dev/null || true
        else why+=("cannot create a Linux bridge: ip link add rankq-probe0 type bridge"); fi
    fi
    if command -v nft >/dev/null; then
        if nft add table ip rankq-probe 2>/dev/null; then nft delete table ip rankq-probe 2>/dev/null || true
        else why+=("nftables unavailable (kube-proxy's nftables mode): nft add table ip rankq-probe failed"); fi
    fi
    [ "${#why[@]}" = 0 ] && return 0
    local IFS=$'\n'; echo "${why[*]}"; return 1
}

probe_cgroup() {
    local d="$1/rankq-probe-$$"
    mkdir "$d" 2>/dev/null && rmdir "$d"
}

probe_overlay() {
    mkdir -p "$K8S_STATE_DIR"
    local d rc=0
    d="$(mktemp -d "$K8S_STATE_DIR/.overlay-probe.XXXXXX")"
    mkdir "$d"/{l,u,w,m}
    mount -t overlay overlay -o "lowerdir=$d/l,upperdir=$d/u,workdir=$d/w" "$d/m" 2>/dev/null || rc=1
    [ "$rc" = 0 ] && umount "$d/m"
    rm -rf "$d"
    return "$rc"
}

cmd_address() {
    ip -4 addr show dev lo | grep -q " $K8S_NODE_IP/" || ip addr add "$K8S_NODE_IP/32" dev lo
}

build_pause() { # -> $K8S_BUILD_DIR/pause.oci.tar
    local out="$K8S_BUILD_DIR/pause.oci.tar" tmp
    [ -f "$out" ] && [ "$out" -nt "$K8S_HACK_DIR/pause/pause.go" ] && return 0
    tmp="$(mktemp -d)"
    mkdir -p "$tmp/root"
    (cd "$K8S_HACK_DIR/pause" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false \
        go build -trimpath -ldflags "-s -w" -o "$tmp/root/pause" pause.go)
    tar -C "$tmp/root" --owner=0 --group=0 -cf "$tmp/rootfs.tar" pause
    python3 "$K8S_HACK_DIR/oci.py" write "$tmp/rootfs.tar" "$out" --entrypoint /pause --user 65535 \
        --name "$PAUSE_IMAGE" >/dev/null
    rm -rf "$tmp"
}

cmd_images() {
    build_pause
    ctr_ images import "$K8S_BUILD_DIR/pause.oci.tar" >/dev/null
    local f
    for f in "$IMAGE_DIR"/rankq-*.oci.tar; do
        [ -f "$f" ] || continue
        k8s_log "importing $(basename "$f") into the node's containerd"
        ctr_ images import "$f" >/dev/null
    done
}

cmd_up() {
    need
    # Claim the machine's one real node: check and write the owner under a machine-wide lock, so two
    # checkouts starting at once cannot both pass. Exit 3 = another checkout owns it.
    local owner
    exec 7>"$K8S_NODE_OWNER_FILE.lock"
    flock 7
    if owner="$(cat "$K8S_NODE_OWNER_FILE" 2>/dev/null)" && [ "$owner" != "$K8S_STATE_DIR" ] && [ -f "$owner/run/node" ]; then
        k8s_log "a real node of $owner runs on this machine ($K8S_NODE_OWNER_FILE); stop it first (its make k8s-down)"
        exit 3
    fi
    mkdir -p "$NODE_DIR"/{containerd,kubelet,cni,pv,coredns} "$CTRD_STATE"
    : > "$K8S_STATE_DIR/run/node"
    printf '%s\n' "$K8S_STATE_DIR" > "$K8S_NODE_OWNER_FILE"
    exec 7>&-
    sysctl -qw net.ipv4.ip_forward=1
    sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
    cmd_address

    # --- containerd ---
    local restrict_oom=false oom_adj=-999
    if ! grep -q '^CapEff:.*' /proc/self/status || ! has_cap_sys_resource; then restrict_oom=true; oom_adj=0; fi
    cat > "$NODE_DIR/containerd.toml" <<EOF
version = 2
root = "$NODE_DIR/containerd"
state = "$CTRD_STATE"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # root here may lack CAP_SYS_RESOURCE (docs/real-node.md): no negative OOM scores (kubelet asks
  # -998 for sandboxes); clamp them to containerd's own score instead of failing every pod.
  restrict_oom_score_adj = $restrict_oom
  enable_cdi = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni"
EOF
    proc_start containerd "" "$(command -v containerd)" --config "$NODE_DIR/containerd.toml" --log-level warn
    proc_wait containerd 30 ctr --address "$SOCK" version
    cmd_images

    # --- kubelet ---
    cat > "$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $K8S_NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
cgroupDriver: cgroupfs
oomScoreAdj: $oom_adj
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$SOCK
clusterDomain: $K8S_DNS_DOMAIN
clusterDNS: [$K8S_NODE_IP]
resolvConf: /etc/resolv.conf
serializeImagePulls: false
evictionHard: {memory.available: 100Mi, nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
nodeStatusReportFrequency: 10s
registerWithTaints:
- {key: rankq.dev/real-node, value: "true", effect: NoSchedule}
EOF
    proc_start kubelet "" "$K8S_STATE_DIR/bin/kubelet" \
        --config="$NODE_DIR/kubelet.yaml" \
        --kubeconfig="$PKI/kubelet-client.kubeconfig" \
        --root-dir="$NODE_DIR/kubelet" \
        --hostname-override="$K8S_NODE_NAME" \
        --node-ip="$K8S_NODE_IP" \
        --node-labels="type=real" \
        --v=1
    registered() { $KC get node "$K8S_NODE_NAME" -o jsonpath='{.spec.podCIDR}' | grep -q .; }
    proc_wait kubelet 90 registered
    local cidr
    cidr="$($KC get node "$K8S_NODE_NAME" -o jsonpath='{.spec.podCIDR}')"

    # --- pod network: one bridge, addresses from the node's pod CIDR ---
    cat > "$NODE_DIR/cni/10-rankq.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "rankq", "plugins": [
  {"type": "bridge", "bridge": "$CNI_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$cidr"}]], "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": "$NODE_DIR/cni/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "loopback"}
]}
EOF

    # --- kube-proxy (nftables: no iptables needed) ---
    cat > "$NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection: {kubeconfig: $PKI/kube-proxy.kubeconfig}
hostnameOverride: $K8S_NODE_NAME
clusterCIDR: $K8S_POD_CIDR
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [$K8S_NODE_IP/32]
conntrack: {maxPerCore: 0}
oomScoreAdj: $oom_adj
EOF
    proc_start kube-proxy "" "$K8S_STATE_DIR/bin/kube-proxy" --config="$NODE_DIR/kube-proxy.yaml"

    # --- cluster DNS: CoreDNS as a process on the node address ---
    cat > "$NODE_DIR/coredns/Corefile" <<EOF
.:53 {
    bind $K8S_NODE_IP
    errors
    kubernetes $K8S_DNS_DOMAIN in-addr.arpa ip6.arpa {
        kubeconfig $PKI/coredns.kubeconfig rankq-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
EOF
    proc_start coredns "" "$K8S_STATE_DIR/bin/coredns" -conf "$NODE_DIR/coredns/Corefile"

    cmd_pvs

    node_ready() {
        [ "$($KC get node "$K8S_NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
    }
    proc_wait kubelet 120 node_ready
    proc_wait kube-proxy 30 curl -fsS -o /dev/null http://127.0.0.1:10256/healthz
    k8s_log "real node $K8S_NODE_NAME Ready ($K8S_NODE_IP, pods $cidr, taint rankq.dev/real-node=true:NoSchedule)"
}

# Storage: local PVs on the node, class rankq-local (no provisioner, bound on first use). A PV whose
# claim was deleted (Released) is wiped and made Available again, as a local provisioner would.
cmd_pvs() {
    local name
    for name in $($KC get pv -l type=real -o jsonpath='{range .items[?(@.status.phase=="Released")]}{.metadata.name}{"\n"}{end}'); do
        $KC delete pv "$name" --wait=true >/dev/null
        rm -rf "${NODE_DIR:?}/pv/pv-${name##*-pv-}"
    done
    local pvs="$NODE_DIR/pvs.yaml" i
    cat > "$pvs" <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: rankq-local}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
EOF
    for i in $(seq 0 $((PV_COUNT - 1))); do
        mkdir -p "$NODE_DIR/pv/pv-$i"
        cat >> "$pvs" <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: $K8S_NODE_NAME-pv-$i, labels: {type: real}}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: rankq-local
  local: {path: $NODE_DIR/pv/pv-$i}
  nodeAffinity:
    required:
      nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [$K8S_NODE_NAME]}]}]
EOF
    done
    $KC apply -f "$pvs" >/dev/null

}

cmd_down() {
    proc_stop kubelet
    if proc_pid containerd >/dev/null; then
        local ids id
        ids="$(ctr_ tasks ls -q 2>/dev/null || true)"
        for id in $ids; do ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
        # containerd's CRI plugin deletes a task once it exited; delete only what is left after that.
        for _ in $(seq 50); do [ -z "$(ctr_ tasks ls -q 2>/dev/null)" ] && break; sleep 0.1; done
        for id in $(ctr_ tasks ls -q 2>/dev/null || true); do ctr_ tasks delete "$id" >/dev/null 2>&1 || true; done
        for id in $(ctr_ containers ls -q 2>/dev/null || true); do ctr_ containers delete "$id" >/dev/null 2>&1 || true; done
    fi
    proc_stop containerd
    # Shims of this containerd outlive it; they name its socket on their command line.
    local pid
    for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $SOCK( |$)" || true); do kill -KILL "$pid" 2>/dev/null || true; done
    proc_stop coredns
    proc_stop kube-proxy
    [ -x "$K8S_STATE_DIR/bin/kube-proxy" ] && "$K8S_STATE_DIR/bin/kube-proxy" --cleanup >/dev/null 2>&1 || true
    nft delete table ip kube-proxy 2>/dev/null || true
    nft delete table ip6 kube-proxy 2>/dev/null || true
    # Everything mounted below the node's directories (pod volumes, overlay snapshots, netns).
    local m
    for m in $(findmnt -rn -o TARGET | grep -E "^($NODE_DIR|$CTRD_STATE)" | sort -r || true); do umount -l "$m" 2>/dev/null || true; done
    ip link del "$CNI_BRIDGE" 2>/dev/null || true
    ip addr del "$K8S_NODE_IP/32" dev lo 2>/dev/null || true
    rm -rf "${NODE_DIR:?}" "${CTRD_STATE:?}" "$K8S_STATE_DIR/run/node"
    [ "$(cat "$K8S_NODE_OWNER_FILE" 2>/dev/null)" = "$K8S_STATE_DIR" ] && rm -f "$K8S_NODE_OWNER_FILE"
    k8s_log "real node stopped"
}

case "${1:-}" in
    address) cmd_address ;;
    up) cmd_up ;;
    down) cmd_down ;;
    images) need; cmd_images ;;
    pvs) cmd_pvs ;;
    check) cmd_check ;;
    install) cmd_install ;;
    *) echo "usage: $0 address|up|down|images|pvs|check|install" >&2; exit 2 ;;
esac
