#!/usr/bin/env bash
# Tell what runs (`make k8s-status`). Exit 0 when every started component runs and the API is
# ready, 1 otherwise.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$K8S_HACK_DIR/proc.sh"

rc=0
printf 'state dir   %s\n' "$K8S_STATE_DIR"
printf 'binaries    %s\n' "${KUBEBUILDER_ASSETS:+KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS, then }$K8S_BUILD_BIN"
for b in "${K8S_ALL_BINARIES[@]}"; do
    if p="$(k8s_find_binary "$b")"; then printf '  %-24s %s\n' "$b" "$p"; else printf '  %-24s missing (make k8s-build)\n' "$b"; fi
done

expected=""
[ -f "$K8S_STATE_DIR/run/components" ] && expected="$(cat "$K8S_STATE_DIR/run/components")"
printf 'processes\n'
for name in etcd kube-apiserver kube-controller-manager kube-scheduler kwok; do
    if pid="$(proc_pid "$name")"; then
        printf '  %-24s running (pid %s, log %s)\n' "$name" "$pid" "$K8S_STATE_DIR/logs/$name.log"
    elif [[ " $expected " == *" $name "* ]]; then
        printf '  %-24s NOT RUNNING (see %s)\n' "$name" "$K8S_STATE_DIR/logs/$name.log"; rc=1
    else
        printf '  %-24s not running\n' "$name"
    fi
done

kc="$K8S_STATE_DIR/bin/kubectl"
if [ -x "$kc" ] && [ -f "$K8S_STATE_DIR/kubeconfig" ] && proc_pid kube-apiserver >/dev/null; then
    export KUBECONFIG="$K8S_STATE_DIR/kubeconfig"
    if "$kc" --request-timeout=5s get --raw /readyz >/dev/null 2>&1; then
        printf 'api         ready at https://127.0.0.1:%s (%s)\n' "$K8S_APISERVER_PORT" \
            "$("$kc" version -o json 2>/dev/null | sed -n 's/.*"gitVersion": "\(.*\)".*/\1/p' | tail -1)"
        printf 'kubeconfig  %s\n' "$KUBECONFIG"
        printf 'nodes\n'
        "$kc" --request-timeout=5s get nodes -o wide 2>/dev/null | sed 's/^/  /'
    else
        printf 'api         NOT READY\n'; rc=1
    fi
else
    printf 'api         down (make k8s-up)\n'
    [ -n "$expected" ] && rc=1
fi
exit "$rc"
