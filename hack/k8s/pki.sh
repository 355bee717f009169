#!/usr/bin/env bash
# Generate the control plane's certificates and keys with openssl into $K8S_STATE_DIR/pki.
# Runs at `make k8s-up`; existing files are kept, so a restart reuses the same CA and tokens stay
# valid. `make k8s-down` deletes them. Nothing here is ever committed.
#
#   ca.{crt,key}                cluster CA: apiserver serving cert, client certs, CSR signing
#   apiserver.{crt,key}         serving cert for 127.0.0.1, localhost, the kubernetes Service IP/names
#   admin.{crt,key}             CN=rankq-admin, O=system:masters (the admin kubeconfig)
#   kube-controller-manager.*   CN=system:kube-controller-manager (RBAC bootstrap role)
#   kube-scheduler.*            CN=system:kube-scheduler (RBAC bootstrap role)
#   kwok.*                      CN=kwok, O=system:masters (fakes node and pod status)
#   front-proxy-ca.{crt,key}    aggregation layer: CA for the requestheader client cert
#   front-proxy-client.*        CN=front-proxy-client, presented to aggregated API servers
#   sa.{key,pub}                ServiceAccount token signing key pair
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v openssl >/dev/null || k8s_die "openssl not found (apt-get install openssl)"
pki="$K8S_STATE_DIR/pki"
mkdir -p "$pki"
chmod 0700 "$pki"
days=3650

newkey() { # newkey FILE: an EC P-256 key (fast to generate; accepted by every component)
    [ -f "$1" ] || openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
    chmod 0600 "$1"
}

ca() { # ca NAME CN
    local name="$1" cn="$2"
    [ -f "$pki/$name.crt" ] && return 0
    newkey "$pki/$name.key"
    openssl req -x509 -new -key "$pki/$name.key" -subj "/CN=$cn" -days "$days" -sha256 \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign" \
        -out "$pki/$name.crt" 2>/dev/null
}

cert() { # cert CA NAME SUBJECT EXTKEYUSAGE [SAN]
    local ca="$1" name="$2" subj="$3" eku="$4" san="${5:-}"
    [ -f "$pki/$name.crt" ] && return 0
    newkey "$pki/$name.key"
    local ext
    ext="$(mktemp)"
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$eku"
        [ -n "$san" ] && echo "subjectAltName=$san"
    } > "$ext"
    openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
    openssl x509 -req -in "$pki/$name.csr" -CA "$pki/$ca.crt" -CAkey "$pki/$ca.key" -CAcreateserial \
        -days "$days" -sha256 -extfile "$ext" -out "$pki/$name.crt" 2>/dev/null
    rm -f "$ext" "$pki/$name.csr"
}

ca ca rankq-local-ca
ca front-proxy-ca rankq-local-front-proxy-ca

san="IP:127.0.0.1,IP:$K8S_CLUSTER_IP_KUBERNETES,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default"
san+=",DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
[ "$K8S_BIND_ADDRESS" != 127.0.0.1 ] && san+=",IP:$K8S_BIND_ADDRESS"
k8s_real_node && san+=",IP:$K8S_NODE_IP"
cert ca apiserver "/CN=kube-apiserver" serverAuth "$san"
cert ca admin "/O=system:masters/CN=rankq-admin" clientAuth
cert ca kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
cert ca kube-scheduler "/CN=system:kube-scheduler" clientAuth
cert ca kwok "/O=system:masters/CN=kwok" clientAuth
if k8s_real_node; then  # docs/real-node.md
    cert ca kubelet-client "/O=system:nodes/CN=system:node:$K8S_NODE_NAME" clientAuth
    cert ca kubelet-serving "/CN=$K8S_NODE_NAME" serverAuth "IP:$K8S_NODE_IP,DNS:$K8S_NODE_NAME"
    cert ca apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
    cert ca kube-proxy "/CN=system:kube-proxy" clientAuth
    cert ca coredns "/O=system:masters/CN=coredns" clientAuth
fi
cert front-proxy-ca front-proxy-client "/CN=front-proxy-client" clientAuth

if [ ! -f "$pki/sa.key" ]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key" 2>/dev/null
    openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
fi
chmod 0600 "$pki"/*.key
