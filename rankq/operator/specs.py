"""Pure builders: one function per child object of a `Queue`, each returning a plain dict.

Nothing here talks to the API server. `reconcile.py` compares what these return with what exists
and applies the difference. Names, labels and addresses used by several builders live here too, so
the StatefulSet, the Services and the operator agree on them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .models import GRPC_PORT, HTTP_PORT, RAFT_PORT, QueueResource, SecretKeyRef

MANAGED_BY = "rankq-operator"
ROLE_LABEL = "rankq.io/role"
QUEUE_LABEL = "rankq.io/queue"
LEADER, FOLLOWER = "leader", "follower"
DATA_DIR = "/var/lib/rankq"
DRAIN_TIMEOUT = 50  # seconds a preStop drain may wait; the grace period allows for it
TLS_DIR = "/etc/rankq/tls"  # the TLS Secret's tls.crt, tls.key and ca.crt, mounted read-only
TOKEN_KEY = "token"  # key of the generated token Secret
MAX_REPLICAS = 7
HASH_ANNOTATION = "rankq.io/spec-hash"  # a child's built spec, to tell when it must be applied again
IMAGE_UID = 10001  # the image's user (Dockerfile: useradd --uid 10001)


def spec_hash(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# ---- names and labels ------------------------------------------------------------------------------


def peer_service_name(q: QueueResource) -> str:
    return f"{q.name}-peers"


def config_name(q: QueueResource) -> str:
    return f"{q.name}-config"


def raft_secret_name(q: QueueResource) -> str:
    return f"{q.name}-raft"


def token_secret_name(q: QueueResource) -> str:
    return f"{q.name}-token"


def tls_secret_name(q: QueueResource) -> str | None:
    """The Secret with tls.crt, tls.key and ca.crt, or None without TLS."""
    tls = q.spec.tls
    return tls.secret_name or (f"{q.name}-tls" if tls.generate else None)


def generates_token(q: QueueResource) -> bool:
    """The CR names no admin token (`admin` or `secretRef`): the operator generates one."""
    return q.spec.auth.admin is None and q.spec.auth.secret_ref is None


def operator_token_ref(q: QueueResource) -> SecretKeyRef:
    """The token the operator (and a pod's preStop drain) presents; it has the admin scope."""
    auth = q.spec.auth
    return auth.admin or auth.secret_ref or SecretKeyRef(name=token_secret_name(q), key=TOKEN_KEY)


def token_env(q: QueueResource) -> list[tuple[str, SecretKeyRef]]:
    """(variable, Secret key) for each API token the servers accept (see rankq.server.auth.TOKEN_ENV).
    A generated token has all scopes when the CR names no token at all, else only admin."""
    auth = q.spec.auth
    out = [
        (name, ref)
        for name, ref in (
            ("RANKQ_API_TOKEN", auth.secret_ref),
            ("RANKQ_PRODUCE_TOKEN", auth.produce),
            ("RANKQ_CONSUME_TOKEN", auth.consume),
            ("RANKQ_ADMIN_TOKEN", auth.admin),
        )
        if ref is not None
    ]
    if generates_token(q):
        out.append(("RANKQ_ADMIN_TOKEN" if out else "RANKQ_API_TOKEN", operator_token_ref(q)))
    return out


def pod_name(q: QueueResource, ordinal: int) -> str:
    return f"{q.name}-{ordinal}"


def raft_host(q: QueueResource, pod: str) -> str:
    """The stable DNS name of a member (headless Service, publishNotReadyAddresses)."""
    return f"{pod}.{peer_service_name(q)}.{q.namespace}.svc"


def raft_address(q: QueueResource, pod: str) -> str:
    return f"{raft_host(q, pod)}:{RAFT_PORT}"


def http_url(q: QueueResource, pod: str) -> str:
    return f"{'https' if q.spec.tls.enabled else 'http'}://{raft_host(q, pod)}:{HTTP_PORT}"


def tls_names(q: QueueResource) -> list[str]:
    """DNS names a generated certificate covers: every member, the client Service, and loopback
    (the pod's own preStop drain)."""
    return [
        f"*.{peer_service_name(q)}.{q.namespace}.svc",
        f"*.{peer_service_name(q)}.{q.namespace}.svc.cluster.local",
        f"{q.name}.{q.namespace}.svc",
        f"{q.name}.{q.namespace}.svc.cluster.local",
        q.name,
        "localhost",
    ]


def peers_value(q: QueueResource, members: int) -> str:
    """`--peers` for members 0..members-1: `id=host:port,...`."""
    return ",".join(f"{pod_name(q, i)}={raft_address(q, pod_name(q, i))}" for i in range(members))


def selector_labels(q: QueueResource) -> dict[str, str]:
    return {"app.kubernetes.io/name": "rankq", QUEUE_LABEL: q.name}


def labels(q: QueueResource, component: str) -> dict[str, str]:
    return {
        **selector_labels(q),
        "app.kubernetes.io/instance": q.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def selector_string(q: QueueResource) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(q).items())


def owner_reference(q: QueueResource) -> dict[str, Any]:
    return {
        "apiVersion": q.api_version,
        "kind": q.kind,
        "name": q.name,
        "uid": q.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(q: QueueResource, name: str, component: str, **extra: Any) -> dict[str, Any]:
    meta = {
        "name": name,
        "namespace": q.namespace,
        "labels": labels(q, component),
        "ownerReferences": [owner_reference(q)],
    }
    meta.update(extra)
    return meta


def quorum(replicas: int) -> int:
    return replicas // 2 + 1


# ---- queue settings ----------------------------------------------------------------------------------


def queue_settings(q: QueueResource) -> dict[str, Any]:
    """The queue's settings in the server's wire format (PATCH /api/v1/queues/{name})."""
    s, dl = q.spec.queue, q.spec.dead_letter
    out: dict[str, Any] = {
        "fair_groups": s.fair_groups,
        "visibility_timeout": float(s.visibility_timeout_seconds),
        "retention": float(s.retention_seconds),
        "max_payload_bytes": s.max_payload_bytes,
        "dedup_window": float(s.dedup_window_seconds),
        "retry_base": float(s.retry_base_seconds),
        "retry_max": float(s.retry_max_seconds),
        "max_deliveries": dl.max_deliveries,
        "dead_letter": dl.enabled,
        "dead_letter_retention": None if dl.retention_seconds is None else float(dl.retention_seconds),
        "max_length": s.max_length,
        "group_max_inflight": s.group_max_inflight,
        "rate_limit": s.rate_limit,
        "rate_burst": s.rate_burst,
        "group_rate_limit": s.group_rate_limit,
        "max_inflight": s.max_inflight,
        "group_weights": dict(s.group_weights or {}),
        "message_ttl": None if s.message_ttl_seconds is None else float(s.message_ttl_seconds),
        "dependency_failure": s.dependency_failure,
        "dead_letter_queue": dl.queue,
    }
    if s.weights:
        out["weights"] = {int(k): v for k, v in sorted(s.weights.items(), key=lambda kv: int(kv[0]))}
    if s.policy is not None:  # else the server's default, as for a new queue
        out["policy"] = s.policy
    if s.default_priority is not None:
        out["default_priority"] = s.default_priority
    # The group ships finished messages to PostgreSQL only where it has a DSN.
    out["archive"] = q.spec.archive.dsn_secret_ref is not None
    return out


# ---- children ----------------------------------------------------------------------------------------


def build_configmap(q: QueueResource, members: int | None = None) -> dict[str, Any]:
    """Queue settings (for people and tools) and the member list new pods start with."""
    members = q.spec.replicas if members is None else members
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(q, config_name(q), "config"),
        "data": {
            "queue": q.spec.queue_name(q.name),
            "settings.json": json.dumps(queue_settings(q), sort_keys=True),
            "peers": peers_value(q, members),
        },
    }


def build_secret(q: QueueResource, password: str) -> dict[str, Any]:
    """The Raft shared secret; `password` is generated once and kept by reconcile."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(q, raft_secret_name(q), "raft-secret"),
        "type": "Opaque",
        "stringData": {"password": password},
    }


def build_token_secret(q: QueueResource, token: str) -> dict[str, Any]:
    """The generated API token (admin scope, or all scopes when the CR names none); kept by reconcile."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(q, token_secret_name(q), "api-token"),
        "type": "Opaque",
        "stringData": {TOKEN_KEY: token},
    }


def build_tls_secret(q: QueueResource, pem: dict[str, str]) -> dict[str, Any]:
    """A generated TLS Secret in cert-manager's shape: `pem` has tls.crt, tls.key and ca.crt."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(q, f"{q.name}-tls", "tls"),
        "type": "kubernetes.io/tls",
        "stringData": {k: pem[k] for k in ("tls.crt", "tls.key", "ca.crt")},
    }


def build_peer_service(q: QueueResource) -> dict[str, Any]:
    """Headless Service giving every member a stable DNS name, ready or not."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(q, peer_service_name(q), "peers"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(q),
            "ports": [
                {"name": "raft", "port": RAFT_PORT, "targetPort": "raft", "protocol": "TCP"},
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
            ],
        },
    }


def build_leader_service(q: QueueResource) -> dict[str, Any]:
    """The Service applications use: it selects only the pod labelled as the Raft leader."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(q, q.name, "leader"),
        "spec": {
            "type": "ClusterIP",
            "selector": {**selector_labels(q), ROLE_LABEL: LEADER},
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
            ],
        },
    }


def build_pdb(q: QueueResource) -> dict[str, Any]:
    """Voluntary disruptions may never take the group below a majority."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(q, q.name, "pdb"),
        "spec": {"minAvailable": quorum(q.spec.replicas), "selector": {"matchLabels": selector_labels(q)}},
    }


def build_service_account(q: QueueResource) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(q, q.name, "rbac")}


def build_role(q: QueueResource) -> dict[str, Any]:
    """Members may read and label their own pods (the role label), nothing else."""
    pods = [pod_name(q, i) for i in range(MAX_REPLICAS)]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(q, q.name, "rbac"),
        "rules": [{"apiGroups": [""], "resources": ["pods"], "resourceNames": pods, "verbs": ["get", "patch"]}],
    }


def build_role_binding(q: QueueResource) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(q, q.name, "rbac"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": q.name},
        "subjects": [{"kind": "ServiceAccount", "name": q.name, "namespace": q.namespace}],
    }


def build_rbac(q: QueueResource) -> list[dict[str, Any]]:
    return [build_service_account(q), build_role(q), build_role_binding(q)]


def server_args(q: QueueResource) -> list[str]:
    """`rankq server` flags; $(VAR) is expanded by the kubelet from the container's env."""
    return [
        "server",
        "--node-id=$(POD_NAME)",
        "--host=0.0.0.0",
        f"--raft-host=$(POD_NAME).{peer_service_name(q)}.$(POD_NAMESPACE).svc",
        f"--raft-port={RAFT_PORT}",
        f"--http-port={HTTP_PORT}",
        f"--grpc-port={GRPC_PORT}",
        "--peers=$(RANKQ_PEERS)",
        f"--data-dir={DATA_DIR}",
        "--log-format=json",
        *tls_args(q),
    ]


def tls_args(q: QueueResource) -> list[str]:
    if not q.spec.tls.enabled:
        return []
    return [f"--tls-cert={TLS_DIR}/tls.crt", f"--tls-key={TLS_DIR}/tls.key", f"--tls-ca={TLS_DIR}/ca.crt"]


def server_env(q: QueueResource) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        # Read once at container start: scaling changes the ConfigMap, not the pod template.
        {"name": "RANKQ_PEERS", "valueFrom": {"configMapKeyRef": {"name": config_name(q), "key": "peers"}}},
        {
            "name": "RANKQ_RAFT_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": raft_secret_name(q), "key": "password"}},
        },
    ]
    for name, ref in token_env(q):
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    dsn = q.spec.archive.dsn_secret_ref
    if dsn is not None:
        env.append({"name": "RANKQ_ARCHIVE_DSN", "valueFrom": {"secretKeyRef": {"name": dsn.name, "key": dsn.key}}})
        env.append({"name": "RANKQ_ARCHIVE_GROUP", "value": archive_group(q)})
    return env


def archive_group(q: QueueResource) -> str:
    return q.spec.archive.group or f"{q.namespace}/{q.name}"


def default_affinity(q: QueueResource) -> dict[str, Any]:
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": selector_labels(q)},
                    },
                }
            ]
        }
    }


def default_topology_spread(q: QueueResource) -> list[dict[str, Any]]:
    return [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels(q)},
        }
    ]


def build_statefulset(q: QueueResource, replicas: int | None = None) -> dict[str, Any]:
    """The servers. `replicas` is the member count reconcile is at (scaling moves it one at a time).

    updateStrategy OnDelete: the operator rolls pods itself, followers first and the leader last
    after a leadership transfer. podManagementPolicy Parallel: a fresh group needs a majority up at
    once before any member can become ready.
    """
    spec = q.spec
    replicas = spec.replicas if replicas is None else replicas
    scheme = "HTTPS" if spec.tls.enabled else "HTTP"
    http_probe = {
        "httpGet": {"path": "/readyz", "port": "http", "scheme": scheme},
        "periodSeconds": 2,
        "failureThreshold": 2,
        "timeoutSeconds": 1,
    }
    drain = ["rankq", "node", "drain", f"--url={scheme.lower()}://127.0.0.1:{HTTP_PORT}", f"--timeout={DRAIN_TIMEOUT}"]
    if spec.tls.enabled:
        drain.append(f"--ca={TLS_DIR}/ca.crt")
    container: dict[str, Any] = {
        "name": "rankq",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["rankq"],
        "args": server_args(q),
        "env": server_env(q),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "raft", "containerPort": RAFT_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": http_probe,
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http", "scheme": scheme},
            "periodSeconds": 10,
            "failureThreshold": 3,
            "timeoutSeconds": 2,
        },
        "lifecycle": {"preStop": {"exec": {"command": drain}}},
        "volumeMounts": [{"name": "data", "mountPath": DATA_DIR}],
    }
    if spec.tls.enabled:
        container["volumeMounts"].append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    if spec.resources:
        container["resources"] = spec.resources
    pod_spec: dict[str, Any] = {
        "serviceAccountName": q.name,
        "terminationGracePeriodSeconds": DRAIN_TIMEOUT + 10,
        # The image runs as uid 10001; a fresh volume is root's until the kubelet hands it to this group.
        "securityContext": {"runAsNonRoot": True, "runAsUser": IMAGE_UID, "fsGroup": IMAGE_UID},
        "containers": [container],
        "affinity": spec.affinity if spec.affinity is not None else default_affinity(q),
        "topologySpreadConstraints": (
            spec.topology_spread_constraints
            if spec.topology_spread_constraints is not None
            else default_topology_spread(q)
        ),
    }
    if spec.tolerations:
        pod_spec["tolerations"] = spec.tolerations
    if spec.node_selector:
        pod_spec["nodeSelector"] = spec.node_selector
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    sts_spec: dict[str, Any] = {
        "replicas": replicas,
        "serviceName": peer_service_name(q),
        "podManagementPolicy": "Parallel",
        "updateStrategy": {"type": "OnDelete"},
        "selector": {"matchLabels": selector_labels(q)},
        "template": {"metadata": {"labels": labels(q, "server")}, "spec": pod_spec},
    }
    if spec.tls.enabled:
        pod_spec["volumes"] = [{"name": "tls", "secret": {"secretName": tls_secret_name(q), "defaultMode": 0o444}}]
    if spec.storage.ephemeral:
        pod_spec.setdefault("volumes", []).append({"name": "data", "emptyDir": {}})
    else:
        claim: dict[str, Any] = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": spec.storage.size}},
        }
        if spec.storage.storage_class_name:
            claim["storageClassName"] = spec.storage.storage_class_name
        sts_spec["volumeClaimTemplates"] = [{"metadata": {"name": "data", "labels": selector_labels(q)}, "spec": claim}]
        sts_spec["persistentVolumeClaimRetentionPolicy"] = {
            "whenDeleted": "Retain" if spec.storage.keep_on_delete else "Delete",
            # A removed member must never come back with its old Raft state.
            "whenScaled": "Delete",
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(q, q.name, "server"),
        "spec": sts_spec,
    }


def backup_claim_name(q: QueueResource) -> str:
    return f"{q.name}-backups"


def build_backup_claim(q: QueueResource) -> dict[str, Any]:
    b = q.spec.backup
    assert b is not None
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": b.size}}}
    if b.storage_class_name:
        spec["storageClassName"] = b.storage_class_name
    # No owner reference: backups outlive the Queue they came from (that is what they are for).
    meta = {"name": backup_claim_name(q), "namespace": q.namespace, "labels": labels(q, "backup")}
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec}


BACKUP_DIR = "/backups"


def outlives_queue(obj: dict[str, Any], q: QueueResource) -> bool:
    """A child made without an owner on purpose (the backup volume), recognised by its labels."""
    labels_ = obj.get("metadata", {}).get("labels") or {}
    return (
        obj.get("kind") == "PersistentVolumeClaim"
        and labels_.get("app.kubernetes.io/instance") == q.name
        and labels_.get("app.kubernetes.io/managed-by") == MANAGED_BY
    )


def backup_script(q: QueueResource) -> str:
    """Take a backup from the leader Service, then keep the newest `keep` files."""
    b = q.spec.backup
    assert b is not None
    scheme = "https" if q.spec.tls.enabled else "http"
    ca = f" --ca {TLS_DIR}/ca.crt" if q.spec.tls.enabled else ""
    url = f"{scheme}://{q.name}.{q.namespace}.svc:{HTTP_PORT}"
    return (
        f"set -eu; f={BACKUP_DIR}/{q.name}-$(date -u +%Y%m%dT%H%M%SZ).jsonl.gz; "
        f'rankq --url {url}{ca} backup "$f"; '
        f"ls -1t {BACKUP_DIR}/{q.name}-*.jsonl.gz | tail -n +{b.keep + 1} | xargs -r rm -f --"
    )


def build_backup_cronjob(q: QueueResource) -> dict[str, Any]:
    b = q.spec.backup
    assert b is not None
    token = operator_token_ref(q)  # a backup needs the admin scope
    container: dict[str, Any] = {
        "name": "backup",
        "image": q.spec.image,
        "imagePullPolicy": q.spec.image_pull_policy,
        "command": ["sh", "-c", backup_script(q)],
        "env": [{"name": "RANKQ_API_TOKEN", "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}}],
        "volumeMounts": [{"name": "backups", "mountPath": BACKUP_DIR}],
    }
    volumes: list[dict[str, Any]] = [{"name": "backups", "persistentVolumeClaim": {"claimName": backup_claim_name(q)}}]
    if q.spec.tls.enabled:
        container["volumeMounts"].append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        volumes.append({"name": "tls", "secret": {"secretName": tls_secret_name(q), "defaultMode": 0o444}})
    pod = {
        "restartPolicy": "OnFailure",
        "containers": [container],
        "volumes": volumes,
        "securityContext": {"runAsNonRoot": True, "runAsUser": IMAGE_UID, "fsGroup": IMAGE_UID},
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": metadata(q, f"{q.name}-backup", "backup"),
        "spec": {
            "schedule": b.schedule,
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "spec": {"backoffLimit": 2, "template": {"metadata": {"labels": labels(q, "backup")}, "spec": pod}}
            },
        },
    }


def build_children(
    q: QueueResource,
    members: int | None = None,
    password: str = "",
    token: str = "",
    tls_pem: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every child in the order reconcile applies them (dependencies first). `token` and `tls_pem`
    are the generated API token and TLS material, used when the CR asks the operator for them."""
    generated = []
    if generates_token(q):
        generated.append(build_token_secret(q, token))
    if q.spec.tls.generate:
        generated.append(build_tls_secret(q, tls_pem or {"tls.crt": "", "tls.key": "", "ca.crt": ""}))
    return [
        *build_rbac(q),
        build_secret(q, password),
        *generated,
        build_configmap(q, members),
        build_peer_service(q),
        build_leader_service(q),
        build_pdb(q),
        build_statefulset(q, members),
        *([build_backup_claim(q), build_backup_cronjob(q)] if q.spec.backup else []),
    ]
