"""Pure builders for a Queue's worker pools: the Deployment of `rankq worker` pods and what scales it.

One pool becomes a Deployment `<queue>-<pool>` and, by `autoscaling.provider`:
- `hpa`: an autoscaling/v2 HorizontalPodAutoscaler on the External metric `rankq_queue_backlog`
  (served by the operator, see external_metrics.py) with target type AverageValue, so
  replicas = ceil(backlog / targetBacklogPerReplica);
- `keda`: a KEDA ScaledObject with a `metrics-api` trigger reading the queue's `backlog` from the
  leader Service, plus a TriggerAuthentication for the bearer token (no HPA of ours);
- `none`: a fixed `minReplicas`.

Worker pods carry `app.kubernetes.io/name: rankq-worker`, never the servers' selector labels, so the
leader Service, the PDB and the operator's view of the group never see them.
"""

from __future__ import annotations

from typing import Any

from . import external_metrics
from .models import HTTP_PORT, QueueResource, SecretKeyRef, WorkerPoolSpec
from .specs import QUEUE_LABEL, TLS_DIR, TOKEN_KEY, owner_reference, tls_secret_name, token_secret_name

BACKLOG_METRIC = external_metrics.BACKLOG_METRIC
POOL_LABEL = "rankq.io/pool"
INCLUDE_DELAYED_LABEL = external_metrics.INCLUDE_DELAYED_LABEL
WORKER_NAME = "rankq-worker"
METRICS_PORT = 9100
KEDA_API = "keda.sh/v1alpha1"


def deployment_name(q: QueueResource, pool: WorkerPoolSpec) -> str:
    return f"{q.name}-{pool.name}"


def worker_selector(q: QueueResource, pool: WorkerPoolSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": WORKER_NAME, "app.kubernetes.io/instance": q.name, POOL_LABEL: pool.name}


def worker_labels(q: QueueResource, pool: WorkerPoolSpec) -> dict[str, str]:
    return {
        **worker_selector(q, pool),
        QUEUE_LABEL: q.name,
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/managed-by": "rankq-operator",
        "app.kubernetes.io/part-of": "rankq",
    }


def _metadata(q: QueueResource, pool: WorkerPoolSpec, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": q.namespace,
        "labels": worker_labels(q, pool),
        "ownerReferences": [owner_reference(q)],
    }


def leader_url(q: QueueResource) -> str:
    """The leader Service inside the cluster (followers would forward; the leader answers at once)."""
    scheme = "https" if q.spec.tls.enabled else "http"
    return f"{scheme}://{q.name}.{q.namespace}.svc:{HTTP_PORT}"


def worker_token_ref(q: QueueResource) -> SecretKeyRef:
    """Workers dequeue, ack, nack, extend and release: the consume token, else one with all scopes."""
    auth = q.spec.auth
    return auth.consume or auth.secret_ref or SecretKeyRef(name=token_secret_name(q), key=TOKEN_KEY)


def metric_selector(q: QueueResource, pool: WorkerPoolSpec) -> dict[str, str]:
    labels = {QUEUE_LABEL: q.spec.queue_name(q.name)}
    if pool.autoscaling.include_delayed:
        labels[INCLUDE_DELAYED_LABEL] = "true"
    return labels


def worker_args(q: QueueResource, pool: WorkerPoolSpec) -> list[str]:
    args = [
        "worker",
        pool.handler,
        "--queue",
        q.spec.queue_name(q.name),
        "--url",
        leader_url(q),
        "--concurrency",
        str(pool.concurrency),
        "--drain-timeout",
        str(pool.drain_timeout_seconds),
        "--metrics-port",
        str(METRICS_PORT),
    ]
    if pool.visibility_timeout_seconds is not None:
        args += ["--visibility-timeout", str(pool.visibility_timeout_seconds)]
    if q.spec.tls.enabled:
        args += ["--ca", f"{TLS_DIR}/ca.crt"]
    return args


def build_worker_deployment(q: QueueResource, pool: WorkerPoolSpec, replicas: int | None = None) -> dict[str, Any]:
    """The pool's Deployment. `replicas` is set only by whoever owns the count (on creation, or the
    operator's 0 <-> 1 activation); otherwise the field is left out so the HPA's count stands."""
    token = worker_token_ref(q)
    container: dict[str, Any] = {
        "name": "worker",
        "image": pool.image or q.spec.image,
        "imagePullPolicy": q.spec.image_pull_policy,
        "command": ["rankq"],
        "args": worker_args(q, pool),
        "env": [
            {"name": "RANKQ_API_TOKEN", "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}},
            *(pool.env or []),
        ],
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "resources": pool.resources,
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
    }
    if pool.env_from:
        container["envFrom"] = pool.env_from
    pod_spec: dict[str, Any] = {
        "containers": [container],
        # SIGTERM starts the drain; Kubernetes waits this long before SIGKILL.
        "terminationGracePeriodSeconds": pool.grace_seconds,
    }
    if q.spec.tls.enabled:
        container["volumeMounts"] = [{"name": "tls", "mountPath": TLS_DIR, "readOnly": True}]
        pod_spec["volumes"] = [
            {
                "name": "tls",
                "secret": {
                    "secretName": tls_secret_name(q),
                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    "defaultMode": 0o444,
                },
            }
        ]
    for key, value in (
        ("nodeSelector", pool.node_selector),
        ("tolerations", pool.tolerations),
        ("affinity", pool.affinity),
        ("serviceAccountName", pool.service_account_name),
    ):
        if value:
            pod_spec[key] = value
    spec: dict[str, Any] = {
        "selector": {"matchLabels": worker_selector(q, pool)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {"metadata": {"labels": worker_labels(q, pool)}, "spec": pod_spec},
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(q, pool, deployment_name(q, pool)),
        "spec": spec,
    }


def hpa_min_replicas(pool: WorkerPoolSpec, zero_capable: bool) -> int:
    """The HPA's floor: 0 where the apiserver accepts it (HPAScaleToZero), else 1 and the operator
    moves the Deployment between 0 and 1 itself (an HPA at 0 replicas stops scaling)."""
    return pool.autoscaling.min_replicas if zero_capable else max(1, pool.autoscaling.min_replicas)


def build_hpa(q: QueueResource, pool: WorkerPoolSpec, zero_capable: bool = False) -> dict[str, Any]:
    a = pool.autoscaling
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment_name(q, pool)},
        "minReplicas": hpa_min_replicas(pool, zero_capable),
        "maxReplicas": a.max_replicas,
        "metrics": [
            {
                "type": "External",
                "external": {
                    "metric": {"name": BACKLOG_METRIC, "selector": {"matchLabels": metric_selector(q, pool)}},
                    "target": {"type": "AverageValue", "averageValue": str(a.target_backlog_per_replica)},
                },
            }
        ],
    }
    if a.behavior:
        spec["behavior"] = a.behavior
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(q, pool, deployment_name(q, pool)),
        "spec": spec,
    }


def trigger_auth_name(q: QueueResource, pool: WorkerPoolSpec) -> str:
    return f"{deployment_name(q, pool)}-token"


# KEDA's metrics-api trigger: the queue's info document, the backlog's place in it, and the auth
# parameter that carries the Secret's value as `Authorization: Bearer <token>`.
KEDA_TRIGGER = "metrics-api"
KEDA_VALUE_LOCATION = "counts.backlog"  # ready + leased + delayed already due (GJSON path)
KEDA_TOKEN_PARAMETER = "token"


def build_trigger_authentication(q: QueueResource, pool: WorkerPoolSpec) -> dict[str, Any]:
    """The bearer token KEDA sends: the same Secret key the pool's workers use."""
    token = worker_token_ref(q)
    return {
        "apiVersion": KEDA_API,
        "kind": "TriggerAuthentication",
        "metadata": _metadata(q, pool, trigger_auth_name(q, pool)),
        "spec": {"secretTargetRef": [{"parameter": KEDA_TOKEN_PARAMETER, "name": token.name, "key": token.key}]},
    }


def keda_activation_target(pool: WorkerPoolSpec) -> int:
    """KEDA activates when the value is *above* activationTargetValue; activationBacklog is the
    backlog that wakes the pool (>=), so the two differ by one."""
    return max(0, pool.autoscaling.activation_backlog - 1)


def build_scaled_object(q: QueueResource, pool: WorkerPoolSpec) -> dict[str, Any]:
    """A ScaledObject whose metrics-api trigger reads `counts.backlog` from the leader Service.

    KEDA makes (and owns) the HPA itself and moves the Deployment between 0 and 1; replicas =
    ceil(backlog / targetValue) as with our own HPA. `includeDelayed` cannot be expressed here (the
    document has no field for ready + leased + all delayed), so it applies to provider hpa only.
    """
    a = pool.autoscaling
    queue = q.spec.queue_name(q.name)
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment_name(q, pool)},
        "minReplicaCount": a.min_replicas,
        "maxReplicaCount": a.max_replicas,
        "cooldownPeriod": a.cooldown_seconds,
        "triggers": [
            {
                "type": KEDA_TRIGGER,
                "name": "backlog",
                "metricType": "AverageValue",
                "metadata": {
                    "url": f"{leader_url(q)}/api/v1/queues/{queue}",
                    "format": "json",
                    "valueLocation": KEDA_VALUE_LOCATION,
                    "targetValue": str(a.target_backlog_per_replica),
                    "activationTargetValue": str(keda_activation_target(pool)),
                    "authMode": "bearer",
                },
                "authenticationRef": {"name": trigger_auth_name(q, pool)},
            }
        ],
    }
    if a.behavior:
        spec["advanced"] = {"horizontalPodAutoscalerConfig": {"behavior": a.behavior}}
    return {
        "apiVersion": KEDA_API,
        "kind": "ScaledObject",
        "metadata": _metadata(q, pool, deployment_name(q, pool)),
        "spec": spec,
    }


def build_pool_children(q: QueueResource, pool: WorkerPoolSpec, zero_capable: bool = False) -> list[dict[str, Any]]:
    """What one pool needs besides its Deployment, by provider."""
    provider = pool.autoscaling.provider
    if provider == "hpa":
        return [build_hpa(q, pool, zero_capable)]
    if provider == "keda":
        return [build_trigger_authentication(q, pool), build_scaled_object(q, pool)]
    return []


# ---- scale to zero without HPAScaleToZero ---------------------------------------------------------


def activation_step(pool: WorkerPoolSpec, replicas: int, backlog: int, idle_for: float) -> int | None:
    """The operator's 0 <-> 1 move for an HPA pool whose floor is 0 on a cluster without
    HPAScaleToZero (pure: decided from the backlog and how long it has been zero).

    Returns the replica count to set, or None to leave the HPA's count alone.
    """
    a = pool.autoscaling
    if a.provider != "hpa" or a.min_replicas > 0:
        return None
    if replicas == 0 and backlog >= a.activation_backlog:
        return 1
    if replicas > 0 and backlog == 0 and idle_for >= a.cooldown_seconds:
        return 0
    return None
