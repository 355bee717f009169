"""The `Queue` custom resource (group rankq.io, version v1alpha1) as pydantic models.

These models are the single source of the CRD schema (`crd.py` generates `crds/queue.yaml` from
them) and of the operator's view of a manifest. Field names are camelCase on the wire, as in every
Kubernetes API; durations are whole seconds and say so in their names.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from ..engine.config import INT64_MAX, INT64_MIN, MAX_TEXT, QUEUE_NAME, SETTINGS

GROUP = "rankq.io"
VERSION = "v1alpha1"
KIND = "Queue"
PLURAL = "queues"
SINGULAR = "queue"
SHORT_NAMES = ["rq"]
API_VERSION = f"{GROUP}/{VERSION}"

DEFAULT_IMAGE = "rankq:0.1.0"
ALLOWED_REPLICAS = (1, 3, 5, 7)

# Ports inside a pod. Fixed so peer addresses are stable and need no configuration.
HTTP_PORT = 8080
GRPC_PORT = 9090
RAFT_PORT = 7070

# Marks a field whose content Kubernetes itself defines (affinity, resources, ...): kept verbatim.
PRESERVE = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def k8s(**extra: Any) -> dict[str, Any]:
    """Extra keys for a field's generated schema (x-kubernetes-* markers, CEL validations)."""
    return {"json_schema_extra": extra}


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StorageSpec(Model):
    size: str = Field(
        "1Gi",
        pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$",
        description="Size of each member's PersistentVolumeClaim, e.g. 10Gi.",
    )
    storage_class_name: str | None = Field(
        None, description="StorageClass of the claims; default: the cluster's default class."
    )
    keep_on_delete: bool = Field(True, description="Keep the claims (and the queued data) when the Queue is deleted.")
    ephemeral: bool = Field(
        False,
        description="Use an emptyDir instead of claims: data lives only as long as the pod "
        "(development and tests; a group that loses a majority of pods loses its data).",
    )


def from_setting(name: str, description: str, **overrides: Any) -> Any:
    """A field with the default and bounds of the queue setting `name` (rankq.engine.config.SETTINGS),
    in whole seconds for a duration, so the resource accepts what the server accepts."""
    spec = SETTINGS[name]
    scale = 1000 if spec.is_duration else 1
    kw: dict[str, Any] = {}
    if spec.kind is int:  # the int64 extremes go without saying: Kubernetes integers are int64
        if spec.low is not None and spec.low > INT64_MIN:
            kw["ge"] = -(-spec.low // scale)  # at least one whole second when the low is 1 ms
        if spec.high is not None and spec.high < INT64_MAX:
            kw["le"] = spec.high // scale
    default = (
        spec.default // scale if isinstance(spec.default, int) and not isinstance(spec.default, bool) else spec.default
    )
    return Field(overrides.pop("default", default), description=description, **{**kw, **overrides})


class QueueSettingsSpec(Model):
    """Settings of the queue inside the group; applied live through the leader, no restarts."""

    name: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Name of the queue inside the group; default: the Queue's metadata.name.",
    )
    policy: Literal[SETTINGS["policy"].choices] | None = from_setting(  # type: ignore[valid-type]
        "policy",
        "strict: lowest priority number first; weighted: weighted round robin over priority classes; "
        "default: the server's (strict).",
        default=None,
    )
    weights: dict[str, int] | None = Field(
        None,
        description='Priority class -> weight for the weighted policy, e.g. {"1": 30, "2": 25}.',
        **k8s(
            **{
                "x-kubernetes-validations": [
                    {
                        "rule": "self.all(k, k.matches('^-?[0-9]+$') && self[k] >= 1)",
                        "message": "weights maps a priority class (a whole number) to a weight of at least 1",
                    }
                ]
            }
        ),
    )
    default_priority: int | None = from_setting(
        "default_priority", "Priority of a message that names none (server default 3).", default=None
    )
    fair_groups: bool = from_setting("fair_groups", "Serve the message groups of one priority round robin.")
    group_max_inflight: int | None = from_setting("group_max_inflight", "Most leased messages per group (fair groups).")
    visibility_timeout_seconds: int = from_setting("visibility_timeout_ms", "Seconds a received message stays leased.")
    retention_seconds: int = from_setting("retention_ms", "Seconds an acknowledged message's status stays readable.")
    max_length: int | None = from_setting(
        "max_length", "Most messages (ready + delayed + leased); beyond it enqueues get 429."
    )
    max_payload_bytes: int = from_setting("max_payload_bytes", "Largest payload in bytes.")
    dedup_window_seconds: int = from_setting("dedup_window_ms", "Seconds a dedup key is remembered.")
    retry_base_seconds: int = from_setting(
        "retry_base_ms", "First retry delay after a nack without a delay, doubling per delivery."
    )
    retry_max_seconds: int = from_setting("retry_max_ms", "Longest retry delay.")
    rate_limit: int | None = from_setting(
        "rate_limit",
        "Deliveries per second (token bucket); receives get fewer messages when it runs dry. Unset: no limit.",
    )
    rate_burst: int | None = from_setting(
        "rate_burst", "Deliveries the rate limit lets through at once; unset: rateLimit."
    )
    group_rate_limit: int | None = from_setting(
        "group_rate_limit", "Deliveries per second per message group (fair groups). Unset: no limit."
    )
    max_inflight: int | None = from_setting("max_inflight", "Most leased messages of the queue. Unset: no cap.")
    group_weights: dict[str, int] | None = Field(
        None,
        description='Message group -> weight for fair groups, e.g. {"tenant-a": 3}; groups not named weigh 1.',
        **k8s(
            **{
                "x-kubernetes-validations": [
                    {
                        "rule": f"self.all(k, size(k) >= 1 && size(k) <= {MAX_TEXT} && self[k] >= 1)",
                        "message": f"groupWeights maps a group name (1-{MAX_TEXT} characters) to a weight of at least 1",
                    }
                ]
            }
        ),
    )
    message_ttl_seconds: int | None = from_setting(
        "message_ttl_ms",
        "Seconds a message may wait before it expires (dead-lettered with reason expired). Unset: no limit.",
    )
    dependency_failure: Literal[SETTINGS["dependency_failure"].choices] = from_setting(  # type: ignore[valid-type]
        "dependency_failure",
        "What befalls the dependents of a message that was dead-lettered or cancelled: dead_letter or cancel.",
    )


class DeadLetterSpec(Model):
    enabled: bool = from_setting("dead_letter", "Keep messages that ran out of deliveries; false drops them.")
    max_deliveries: int = from_setting(
        "max_deliveries", "Deliveries before a message is dead-lettered; 0 retries forever."
    )
    retention_seconds: int | None = from_setting(
        "dead_letter_retention_ms", "Seconds dead letters are kept (default 14 days)."
    )
    queue: str | None = from_setting(
        "dead_letter_queue",
        "Another queue of the group that receives these dead letters as new messages; unset: they stay here.",
        pattern=QUEUE_NAME.pattern,
    )


# Where each queue setting lives in the resource (specs.queue_settings sends them to the server);
# a test walks rankq.engine.config.SETTINGS and fails for a setting in neither table.
CR_SETTINGS = {
    "policy": ("queue", "policy"),
    "weights": ("queue", "weights"),
    "default_priority": ("queue", "default_priority"),
    "fair_groups": ("queue", "fair_groups"),
    "group_max_inflight": ("queue", "group_max_inflight"),
    "visibility_timeout_ms": ("queue", "visibility_timeout_seconds"),
    "retention_ms": ("queue", "retention_seconds"),
    "max_length": ("queue", "max_length"),
    "max_payload_bytes": ("queue", "max_payload_bytes"),
    "dedup_window_ms": ("queue", "dedup_window_seconds"),
    "retry_base_ms": ("queue", "retry_base_seconds"),
    "retry_max_ms": ("queue", "retry_max_seconds"),
    "rate_limit": ("queue", "rate_limit"),
    "rate_burst": ("queue", "rate_burst"),
    "group_rate_limit": ("queue", "group_rate_limit"),
    "max_inflight": ("queue", "max_inflight"),
    "group_weights": ("queue", "group_weights"),
    "message_ttl_ms": ("queue", "message_ttl_seconds"),
    "dependency_failure": ("queue", "dependency_failure"),
    "dead_letter_queue": ("dead_letter", "queue"),
    "dead_letter": ("dead_letter", "enabled"),
    "max_deliveries": ("dead_letter", "max_deliveries"),
    "dead_letter_retention_ms": ("dead_letter", "retention_seconds"),
}
# Settings the resource leaves to the server's default (archive follows spec.archive.dsnSecretRef).
NOT_IN_CR = {"archive"}


class SecretKeyRef(Model):
    name: str = Field(..., min_length=1, description="Secret in the Queue's namespace.")
    key: str = Field("token", min_length=1, description="Key in the Secret.")


class AuthSpec(Model):
    """API tokens from Secrets; without an admin token the operator generates one (Secret <name>-token)."""

    secret_ref: SecretKeyRef | None = Field(
        None, description="A token with all scopes (env RANKQ_API_TOKEN in the pods)."
    )
    produce: SecretKeyRef | None = Field(None, description="A token that may enqueue (env RANKQ_PRODUCE_TOKEN).")
    consume: SecretKeyRef | None = Field(
        None, description="A token that may dequeue, ack, nack and extend (env RANKQ_CONSUME_TOKEN)."
    )
    admin: SecretKeyRef | None = Field(
        None,
        description="A token that may change queues, dead letters and membership "
        "(env RANKQ_ADMIN_TOKEN); the operator uses it.",
    )


class TlsSpec(Model):
    """TLS for the HTTP and gRPC APIs."""

    secret_name: str | None = Field(
        None,
        min_length=1,
        description="Secret with tls.crt, tls.key and ca.crt (the shape cert-manager writes); "
        "the certificate must name the pods' DNS names.",
    )
    generate: bool = Field(
        False,
        description="Generate a CA and a certificate for the pods into the Secret <name>-tls "
        "(kept across reconciles); clients trust its ca.crt.",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.secret_name) or self.generate


class ArchiveSpec(Model):
    """Copy the queue's finished messages (acked with result, dead-lettered, cancelled) to PostgreSQL."""

    dsn_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret key holding the PostgreSQL connection string (e.g. key dsn); set: archiving is on."
    )
    group: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="This group's name in the archive tables; default: <namespace>/<name>.",
    )


class BackupSpec(Model):
    """Scheduled backups of the whole group to a volume (a CronJob running `rankq backup`)."""

    schedule: str = Field(..., min_length=9, max_length=100, description='Cron schedule, e.g. "0 * * * *" (hourly).')
    keep: int = Field(24, ge=1, le=1000, description="Backups kept on the volume; older ones are deleted.")
    size: str = Field(
        "5Gi",
        pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$",
        description="Size of the backup volume (PersistentVolumeClaim <name>-backups).",
    )
    storage_class_name: str | None = Field(None, description="StorageClass of the backup volume.")


class AutoscalingSpec(Model):
    """How a worker pool follows the queue's backlog (ready + leased, plus delayed if asked)."""

    provider: Literal["hpa", "keda", "none"] = Field(
        "hpa",
        description="hpa: a HorizontalPodAutoscaler on the external metric rankq_queue_backlog that the "
        "operator serves; keda: a KEDA ScaledObject (no HPA of ours); none: fixed minReplicas.",
    )
    min_replicas: int = Field(0, ge=0, le=1000, description="Fewest pods; 0 lets an idle pool scale to zero.")
    max_replicas: int = Field(10, ge=1, le=1000, description="Most pods.")
    target_backlog_per_replica: int = Field(
        100, ge=1, description="Backlog one pod should carry: replicas = ceil(backlog / target)."
    )
    activation_backlog: int = Field(1, ge=1, description="Backlog that wakes a pool at zero (0 -> 1 pod).")
    include_delayed: bool = Field(False, description="Count delayed messages in the backlog too.")
    cooldown_seconds: int = Field(
        300, ge=0, le=86400, description="Seconds with no backlog before a pool at minReplicas 0 goes to zero."
    )
    behavior: dict[str, Any] | None = Field(
        None,
        description="autoscaling/v2 HPA behavior (scaleUp / scaleDown policies), passed through.",
        **k8s(**PRESERVE),
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.max_replicas < self.min_replicas:
            raise ValueError("autoscaling.maxReplicas must be at least minReplicas")
        return self


class WorkerPoolSpec(Model):
    """A Deployment of `rankq worker` pods that run one handler against this Queue."""

    name: str = Field(
        ...,
        min_length=1,
        max_length=40,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Pool name; the Deployment is <queue>-<name>.",
    )
    image: str | None = Field(
        None, min_length=1, description="Image with the handler's code; default: the server image."
    )
    handler: str = Field(
        ...,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$",
        description="The handler as module:function, e.g. myapp.tasks:send_email.",
    )
    concurrency: int = Field(8, ge=1, le=1024, description="Messages one pod works on at once.")
    visibility_timeout_seconds: int | None = Field(
        None, ge=1, le=12 * 3600, description="Lease per message; default: the queue's. Heartbeats extend it."
    )
    drain_timeout_seconds: int = Field(
        30,
        ge=1,
        le=3600,
        description="On SIGTERM, how long running handlers may finish before their messages are "
        "released; the pod's grace period is this plus 15 s.",
    )
    env: list[dict[str, Any]] | None = Field(None, description="Container env, passed through.", **k8s(items=PRESERVE))
    env_from: list[dict[str, Any]] | None = Field(
        None, description="Container envFrom, passed through.", **k8s(items=PRESERVE)
    )
    resources: dict[str, Any] = Field(default_factory=dict, description="Container resources.", **k8s(**PRESERVE))
    node_selector: dict[str, str] | None = None
    tolerations: list[dict[str, Any]] | None = Field(None, **k8s(items=PRESERVE))
    affinity: dict[str, Any] | None = Field(None, **k8s(**PRESERVE))
    service_account_name: str | None = None
    autoscaling: AutoscalingSpec = Field(
        default_factory=AutoscalingSpec,
        **k8s(
            **{
                "x-kubernetes-validations": [
                    {
                        "rule": "(has(self.maxReplicas) ? self.maxReplicas : 10) >= (has(self.minReplicas) ? self.minReplicas : 0)",
                        "message": "autoscaling.maxReplicas must be at least minReplicas",
                    }
                ]
            }
        ),
    )

    @property
    def grace_seconds(self) -> int:
        return self.drain_timeout_seconds + 15


class QueueSpec(Model):
    replicas: int = Field(
        3,
        description="Members of the Raft group: 1, 3, 5 or 7.",
        **k8s(
            **{
                "x-kubernetes-validations": [
                    {
                        "rule": "self in [1, 3, 5, 7]",
                        "message": "replicas must be 1, 3, 5 or 7: a Raft group needs an odd size so that a majority survives failures",
                    }
                ]
            }
        ),
    )
    image: str = Field(
        DEFAULT_IMAGE, min_length=1, description="Server image; a change rolls the pods one at a time, leader last."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field("IfNotPresent")
    resources: dict[str, Any] = Field(
        default_factory=dict, description="Container resources (requests, limits).", **k8s(**PRESERVE)
    )
    storage: StorageSpec = Field(default_factory=StorageSpec)
    queue: QueueSettingsSpec = Field(default_factory=QueueSettingsSpec)
    dead_letter: DeadLetterSpec = Field(default_factory=DeadLetterSpec)
    auth: AuthSpec = Field(default_factory=AuthSpec)
    tls: TlsSpec = Field(
        default_factory=TlsSpec,
        **k8s(
            **{
                "x-kubernetes-validations": [
                    {
                        "rule": "!(has(self.secretName) && self.generate)",
                        "message": "tls takes a secretName or generate: true, not both",
                    }
                ]
            }
        ),
    )
    affinity: dict[str, Any] | None = Field(
        None, description="Pod affinity; default: prefer one member per node.", **k8s(**PRESERVE)
    )
    tolerations: list[dict[str, Any]] | None = Field(None, description="Pod tolerations.", **k8s(items=PRESERVE))
    node_selector: dict[str, str] | None = Field(None, description="Pod node selector.")
    topology_spread_constraints: list[dict[str, Any]] | None = Field(
        None,
        description="Pod topology spread; default: spread members across nodes (maxSkew 1).",
        **k8s(items=PRESERVE),
    )
    priority_class_name: str | None = None
    archive: ArchiveSpec = Field(default_factory=ArchiveSpec)
    backup: BackupSpec | None = Field(None, description="Scheduled backups to a volume; restore with `rankq restore`.")
    workers: list[WorkerPoolSpec] = Field(
        default_factory=list,
        max_length=20,
        description="Worker pools: Deployments of `rankq worker` scaled on backlog.",
        **k8s(**{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}),
    )

    def queue_name(self, cr_name: str) -> str:
        return self.queue.name or cr_name


class Condition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class MessageCounts(Model):
    ready: int = 0
    leased: int = 0
    delayed: int = 0
    dead: int = 0


class MemberStatus(Model):
    pod: str
    address: str | None = None
    role: str | None = None
    healthy: bool | None = None
    lag: int | None = None


class WorkerPoolStatus(Model):
    name: str
    desired_replicas: int | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    backlog: int | None = None
    last_scale_reason: str | None = None
    last_scale_time: str | None = None


class QueueStatus(Model):
    phase: Literal["Pending", "Creating", "Running", "Scaling", "Updating", "Degraded"] | None = None
    leader: str | None = Field(None, description="Pod that is the Raft leader.")
    replicas: int | None = Field(None, description="Pods of the StatefulSet (scale subresource).")
    ready_replicas: int | None = None
    selector: str | None = Field(None, description="Label selector of the pods (scale subresource).")
    members: list[MemberStatus] | None = Field(None, description="Raft members as the leader reports them.")
    messages: MessageCounts | None = None
    depth: int | None = Field(None, description="ready + delayed + leased messages.")
    term: int | None = None
    current_image: str | None = None
    workers: list[WorkerPoolStatus] | None = Field(None, description="Per worker pool: replicas and the last scaling.")
    workers_summary: str | None = Field(None, description="ready/desired worker pods over all pools (printer column).")
    observed_generation: int | None = None
    conditions: list[Condition] | None = Field(
        None, **k8s(**{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    )


class QueueResource(Model):
    """A whole `Queue` object as the operator reads it."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    api_version: str = API_VERSION
    kind: str = KIND
    metadata: dict[str, Any]
    spec: QueueSpec = Field(default_factory=QueueSpec)
    status: QueueStatus | None = None

    @property
    def name(self) -> str:
        return self.metadata["name"]

    @property
    def namespace(self) -> str:
        return self.metadata.get("namespace") or "default"

    @property
    def uid(self) -> str | None:
        return self.metadata.get("uid")

    @property
    def generation(self) -> int | None:
        return self.metadata.get("generation")

    @classmethod
    def from_body(cls, body: Any) -> QueueResource:
        data = {k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec")}
        data["metadata"] = dict(data["metadata"] or {})
        data["spec"] = dict(data["spec"] or {})
        return cls.model_validate(data)
