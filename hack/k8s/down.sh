#!/usr/bin/env bash
# Stop exactly the processes `make k8s-up` started (by pidfile) and delete the runtime state:
# etcd data, certificates, kubeconfigs, pidfiles, bin links. Logs stay in $K8S_STATE_DIR/logs for
# a post-mortem (`RANKQ_K8S_KEEP_LOGS=0` deletes them too). Built binaries in the cache stay.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$K8S_HACK_DIR/proc.sh"

[ -d "$K8S_STATE_DIR" ] || { k8s_log "nothing to stop ($K8S_STATE_DIR does not exist)"; exit 0; }

exec 8>"$K8S_STATE_DIR/.lock"
flock 8

# The real node first (its pods, containerd, kube-proxy's rules, mounts), if one was started.
if [ -f "$K8S_STATE_DIR/run/node" ]; then "$K8S_HACK_DIR/node.sh" down; fi

# Reverse start order: the fake nodes' agent and the controllers first, etcd last.
for name in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
    proc_stop "$name"
done

rm -rf "${K8S_STATE_DIR:?}"/{bin,etcd,pki,run} "${K8S_STATE_DIR:?}"/{kubeconfig,env}
if [ "${RANKQ_K8S_KEEP_LOGS:-1}" = 0 ]; then
    rm -rf "${K8S_STATE_DIR:?}"
else
    k8s_log "logs kept in $K8S_STATE_DIR/logs"
fi
k8s_log "control plane stopped and cleaned up"
