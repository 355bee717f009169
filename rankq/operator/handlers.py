"""kopf wiring: watches wake one daemon per Queue; the daemon reconciles while this instance leads.

- Queue: `on.create` / `on.update` / `on.resume` wake its daemon for a full reconcile (kopf's
  update excludes status, so the operator's own status writes cause no work).
- Children: pods and StatefulSets feed kopf indexes (the daemon reads them instead of the API
  server) and wake the owning Queue; every other child kind, and a Secret a Queue references,
  wakes it on any change, so a deleted child is recreated at once.
- `@kopf.daemon` per Queue: kopf starts it when the Queue appears and stops it when the Queue goes
  (kopf keeps a finalizer on the Queue for that). Between wake-ups it checks the group's Raft state
  (the servers' `/api/v1/cluster`, which no watch can report) at a pace that backs off while the
  Queue is settled. Reconcile (`reconcile.QueueController`) does the work.
- A coordination.k8s.io Lease lets one operator instance act at a time (kopf runs `standalone`).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf

from . import external_metrics, specs, worker_specs
from .endpoints import Endpoints, FileEndpoints
from .kube import Kube, KubeError, code
from .models import GROUP, PLURAL, VERSION
from .reconcile import QueueController

log = logging.getLogger("rankq.operator")

LEASE_NAME = "rankq-operator"
LEASE_SECONDS = 15
RENEW_EVERY = 5.0
DEBOUNCE = 0.1  # seconds to gather the burst of watch events one change causes
# Raft-state check of one Queue: fast while something moves, doubling while settled, up to a cap.
# The cap with a leader bounds how late a dead leader's label is moved (see docs/operator.md); the
# check costs the API server nothing (pods come from the index), only an HTTP GET per member.
CHECK_FAST = 0.5
CHECK_SETTLED = 2.0
CHECK_SILENT = 30.0  # no member answers: only a watch event (a pod changing) can change that
CHECK_DEGRADED = 10.0

# Label filters: a value or kopf.PRESENT (whose type kopf does not export).
APP: dict[str, Any] = {"app.kubernetes.io/name": "rankq", specs.QUEUE_LABEL: kopf.PRESENT}
WORKERS: dict[str, Any] = {"app.kubernetes.io/name": worker_specs.WORKER_NAME, specs.QUEUE_LABEL: kopf.PRESENT}
CHILDREN = [
    ("", "v1", "services"),
    ("", "v1", "configmaps"),
    ("", "v1", "serviceaccounts"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("rbac.authorization.k8s.io", "v1", "roles"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings"),
]


@dataclass
class Settings:
    namespace: str = field(default_factory=lambda: os.environ.get("POD_NAMESPACE") or "default")  # of the Lease
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}")
    endpoints_file: str | None = None
    # The external metrics API for the HPA (off when no port is given).
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"
    metrics_cert: str | None = None
    metrics_key: str | None = None
    requestheader_ca: str | None = None  # default: read from kube-system/extension-apiserver-authentication


class Wake:
    """A Queue's wake-up call: set by watches, taken by its daemon (`full`: compare children too)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.full = True

    def set(self, full: bool) -> None:
        self.full = self.full or full
        self.event.set()

    def take(self) -> bool:
        full, self.full = self.full, False
        self.event.clear()
        return full

    async def wait(self, timeout: float | None, stopped: Any) -> bool:
        """Until woken (True), `timeout` passes or kopf stops the daemon (False)."""
        return await first(self.event.wait(), stopped, timeout) and self.event.is_set()


async def first(awaitable: Any, stopped: Any, timeout: float | None = None) -> bool:
    """Await `awaitable` unless kopf's `stopped` flag is raised first; False on stop or timeout."""

    async def until_stopped() -> None:
        await stopped.wait()

    job, stop = asyncio.ensure_future(awaitable), asyncio.ensure_future(until_stopped())
    try:
        await asyncio.wait([job, stop], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (job, stop):
            task.cancel()
    return job.done() and not job.cancelled() and not stopped


def next_check(previous: float, settled: bool, controller: QueueController) -> float:
    """Seconds until the next Raft-state check of a Queue."""
    if controller.degraded is not None:
        return min(max(previous * 2, 1.0), CHECK_DEGRADED)
    if not settled:
        return CHECK_FAST
    cap = CHECK_SETTLED if controller.seen and controller.seen[1] else CHECK_SILENT
    return min(previous * 2, cap)


class Operator:
    """The per-process state the handlers share."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kube: Kube | None = None
        self.endpoints: Endpoints = FileEndpoints(settings.endpoints_file) if settings.endpoints_file else Endpoints()
        self.wakes: dict[tuple[str, str], Wake] = {}
        self.secret_refs: dict[tuple[str, str], set[tuple[str, str]]] = {}  # Secret -> Queues naming it
        self.leading = asyncio.Event()
        self.lease_task: asyncio.Task | None = None
        self.lease: dict[str, Any] | None = None
        self.controllers: dict[tuple[str, str], QueueController] = {}
        self.metrics: external_metrics.ExternalMetricsServer | None = None

    async def start(self) -> None:
        self.kube = Kube()
        self.lease_task = asyncio.create_task(self.hold_lease(), name="lease")
        if self.settings.metrics_port:
            await self.start_metrics(self.settings.metrics_port)

    async def start_metrics(self, port: int) -> None:
        s = self.settings
        if not (s.metrics_cert and s.metrics_key):
            raise kopf.PermanentError("--metrics-api-port needs --metrics-api-cert and --metrics-api-key")
        ca = s.requestheader_ca or await self._requestheader_ca()
        tls = external_metrics.ServingTLS(s.metrics_cert, s.metrics_key, ca)
        self.metrics = external_metrics.ExternalMetricsServer(self.backlog, tls, s.metrics_host, port)
        await self.metrics.start()

    async def _requestheader_ca(self) -> str:
        """The CA the kube-apiserver's proxy certificate comes from, as the cluster publishes it."""
        import tempfile

        assert self.kube is not None
        cm = await self.kube.get("ConfigMap", "kube-system", "extension-apiserver-authentication")
        pem = ((cm or {}).get("data") or {}).get("requestheader-client-ca-file")
        if not pem:
            raise kopf.PermanentError(
                "kube-system/extension-apiserver-authentication has no requestheader-client-ca-file: "
                "the cluster's aggregation layer is not set up"
            )
        with tempfile.NamedTemporaryFile("w", suffix=".crt", delete=False) as fh:
            fh.write(pem)
        return fh.name

    async def backlog(self, namespace: str, queue: str, include_delayed: bool = False) -> int:
        """The backlog of the Queue (by its name or its queue's name) in `namespace`, for the HPA."""
        for (ns, name), controller in list(self.controllers.items()):
            q = controller.queue
            if ns == namespace and q is not None and queue in (name, q.spec.queue_name(name)):
                value = await controller.read_backlog(include_delayed)
                if value is None:
                    raise external_metrics.MetricUnavailable(f"the leader of Queue {namespace}/{name} does not answer")
                return value
        raise external_metrics.MetricNotFound(
            f"no Queue {queue!r} in namespace {namespace!r} (or this operator instance does not lead)"
        )

    async def stop(self) -> None:
        if self.metrics:
            await self.metrics.stop()
        if self.lease_task:
            self.lease_task.cancel()
        await self.release_lease()
        if self.kube:
            await self.kube.close()

    def wake(self, namespace: str | None, queue: str | None, full: bool) -> None:
        wake = self.wakes.get((namespace, queue)) if namespace and queue else None
        if wake is not None:
            wake.set(full)

    # -- only one operator acts at a time --

    async def hold_lease(self) -> None:
        """Acquire and renew a coordination.k8s.io Lease; act only while holding it."""
        me, ns = self.settings.identity, self.settings.namespace
        while True:
            try:
                held = await self._try_lease(me, ns)
            except KubeError as err:
                log.warning("lease %s/%s: %s", ns, LEASE_NAME, err)
                held = False
            if held and not self.leading.is_set():
                log.info("holding lease %s/%s as %s: reconciling", ns, LEASE_NAME, me)
                self.leading.set()
            elif not held and self.leading.is_set():
                log.warning("lost lease %s/%s: standing by", ns, LEASE_NAME)
                self.leading.clear()
            await asyncio.sleep(RENEW_EVERY)

    async def _try_lease(self, me: str, ns: str) -> bool:
        assert self.kube is not None
        now = datetime.now(UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        spec = {"holderIdentity": me, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": stamp}
        # While holding it, renew from our last write (one request); a 409 means someone else wrote.
        lease = self.lease if self.leading.is_set() and self.lease else await self.kube.get("Lease", ns, LEASE_NAME)
        if lease is None:
            try:
                self.lease = await self.kube.create(
                    {
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {"name": LEASE_NAME, "namespace": ns},
                        "spec": {**spec, "acquireTime": stamp},
                    }
                )
                return True
            except KubeError as err:
                if code(err) == 409:
                    return False
                raise
        cur = lease.get("spec") or {}
        holder, renew = cur.get("holderIdentity"), cur.get("renewTime")
        expired = True
        if renew:
            renewed = datetime.fromisoformat(renew.replace("Z", "+00:00"))
            expired = now - renewed > timedelta(seconds=cur.get("leaseDurationSeconds") or LEASE_SECONDS)
        if holder not in (me, None, "") and not expired:
            return False
        if holder != me:
            spec["acquireTime"] = stamp
        try:
            # The resourceVersion we read is a precondition: a concurrent taker makes this fail with 409.
            self.lease = await self.kube.merge_patch(
                "Lease",
                ns,
                LEASE_NAME,
                {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]}, "spec": spec},
            )
            return True
        except KubeError as err:
            self.lease = None
            if code(err) == 409:
                return False
            raise

    async def release_lease(self) -> None:
        if not self.leading.is_set() or self.kube is None:
            return
        try:
            lease = await self.kube.get("Lease", self.settings.namespace, LEASE_NAME)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.settings.identity:
                await self.kube.merge_patch(
                    "Lease",
                    self.settings.namespace,
                    LEASE_NAME,
                    {
                        "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                        "spec": {"holderIdentity": None},
                    },
                )
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass

    # -- one daemon per Queue --

    async def run_queue(
        self,
        body: kopf.Body,
        pods: kopf.Index,
        statefulsets: kopf.Index,
        stopped: Any,
        deployments: kopf.Index | None = None,
    ) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        wake = self.wakes[key] = Wake()
        assert self.kube is not None
        controller = self.controllers[key] = QueueController(self.kube, self.endpoints)
        interval = CHECK_FAST
        try:
            while not stopped:
                if not self.leading.is_set() and not await first(self.leading.wait(), stopped):
                    break
                full = wake.take()
                plain = _plain(body)
                if plain["metadata"].get("deletionTimestamp"):
                    break  # going: garbage collection removes the children, kopf stops this daemon
                self._track_secret(key, plain)
                sts = next(iter(statefulsets.get(key, [])), None)
                try:
                    workers = copy.deepcopy(list(deployments.get(key, []))) if deployments is not None else []
                    settled = await controller.tick(
                        plain, copy.deepcopy(sts), copy.deepcopy(list(pods.get(key, []))), full, workers
                    )
                except Exception:  # noqa: BLE001 - a bug must not end the daemon; it is logged and retried
                    log.exception("%s/%s: reconcile failed", *key)
                    settled = False
                if (
                    controller.degraded
                    and controller.degraded[0] == "KubernetesError"
                    and await self.kube.get("Queue", *key) is None
                ):
                    break  # deleted behind kopf's back (its finalizer removed by hand)
                interval = next_check(interval, settled, controller)
                if await wake.wait(interval, stopped):
                    interval = CHECK_FAST
                    await asyncio.sleep(DEBOUNCE)
        finally:
            if self.wakes.get(key) is wake:
                del self.wakes[key]
            if self.controllers.get(key) is controller:
                del self.controllers[key]
            self._track_secret(key, None)
            await controller.close()

    def _track_secret(self, key: tuple[str, str], body: dict[str, Any] | None) -> None:
        """Remember which Secrets a Queue names (its tokens, its TLS Secret), so their changes wake it."""
        for refs in self.secret_refs.values():
            refs.discard(key)
        spec = (body or {}).get("spec") or {}
        auth = spec.get("auth") or {}
        names = [(auth.get(field) or {}).get("name") for field in ("secretRef", "produce", "consume", "admin")]
        names.append((spec.get("tls") or {}).get("secretName"))
        for name in filter(None, names):
            self.secret_refs.setdefault((key[0], name), set()).add(key)


def _plain(body: Any) -> dict[str, Any]:
    """A detached deep copy of a kopf body."""
    return copy.deepcopy(dict(body))


def _queue_of(labels: Any) -> str | None:
    return (labels or {}).get(specs.QUEUE_LABEL)


def register(settings: Settings) -> kopf.OperatorRegistry:
    """A registry with the operator's handlers (no module-level side effects on import)."""
    registry = kopf.OperatorRegistry()
    state = Operator(settings)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.persistence.finalizer = f"{GROUP}/finalizer"
        # Handler progress in annotations: the Queue's status is ours, and its schema is structural.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration"
        )
        settings.posting.level = logging.WARNING
        settings.posting.reporting_component = "rankq-operator"
        # Resources are resolved once through discovery: no need to watch CRDs (least privilege).
        settings.scanning.disabled = True
        await state.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await state.stop()

    # -- the Queue --

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    def queue_changed(namespace: str | None, name: str, **_: Any) -> None:
        state.wake(namespace, name, full=True)

    @kopf.daemon(GROUP, VERSION, PLURAL, registry=registry, cancellation_backoff=5, cancellation_timeout=10)
    async def queue_daemon(body: kopf.Body, stopped: kopf.DaemonStopped, **indexes: Any) -> None:
        # kopf passes its indexes as keyword arguments named by index id; its callback types
        # cannot name them, so they are taken from the keywords.
        await state.run_queue(
            body, indexes["rankq_pods"], indexes["rankq_statefulsets"], stopped, indexes["rankq_worker_deployments"]
        )

    # -- what the Queue owns --

    @kopf.index("", "v1", "pods", labels=APP, registry=registry, id="rankq_pods")
    def rankq_pods(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(namespace, _queue_of(labels)): _plain(body)}

    @kopf.index("apps", "v1", "statefulsets", labels=APP, registry=registry, id="rankq_statefulsets")
    def rankq_statefulsets(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(namespace, name): _plain(body)}

    @kopf.index("apps", "v1", "deployments", labels=WORKERS, registry=registry, id="rankq_worker_deployments")
    def rankq_worker_deployments(
        namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
    ) -> dict[Any, Any]:
        return {(namespace, _queue_of(labels)): _plain(body)}

    @kopf.on.event("apps", "v1", "deployments", labels=WORKERS, registry=registry)
    def worker_deployment_event(
        event: kopf.RawEvent, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
    ) -> None:
        moved = event.get("type") == "DELETED" or body.get("metadata", {}).get("generation") != (
            body.get("status") or {}
        ).get("observedGeneration")
        state.wake(namespace, _queue_of(labels), full=moved)

    @kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", labels=WORKERS, registry=registry)
    def worker_hpa_event(event: kopf.RawEvent, namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
        state.wake(namespace, _queue_of(labels), full=event.get("type") == "DELETED")

    @kopf.on.event("", "v1", "pods", labels=APP, registry=registry)
    def pod_event(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
        state.wake(namespace, _queue_of(labels), full=False)

    @kopf.on.event("apps", "v1", "statefulsets", labels=APP, registry=registry)
    def statefulset_event(
        event: kopf.RawEvent, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
    ) -> None:
        # Only our own spec (or its removal) needs the children compared; status moves need a check.
        moved = event.get("type") == "DELETED" or body.get("metadata", {}).get("generation") != (
            body.get("status") or {}
        ).get("observedGeneration")
        state.wake(namespace, _queue_of(labels), full=moved)

    for group, version, plural in CHILDREN + [("", "v1", "secrets")]:

        @kopf.on.event(group, version, plural, labels=APP, registry=registry, id=f"child-{plural}")
        def child_event(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
            state.wake(namespace, _queue_of(labels), full=True)

    def referenced(namespace: str | None, name: str, **_: Any) -> bool:
        return namespace is not None and (namespace, name) in state.secret_refs

    @kopf.on.event("", "v1", "secrets", when=referenced, registry=registry, id="referenced-secret")
    def referenced_secret(namespace: str | None, name: str, **_: Any) -> None:
        if namespace is None:
            return
        for ns, queue in list(state.secret_refs.get((namespace, name), ())):
            state.wake(ns, queue, full=True)

    return registry


def run(settings: Settings, namespaces: list[str] | None = None, liveness: str | None = None) -> None:
    registry = register(settings)
    asyncio.run(
        kopf.operator(
            registry=registry,
            standalone=True,  # no kopf peering: the Lease above decides who acts
            clusterwide=not namespaces,
            namespaces=namespaces or (),
            liveness_endpoint=liveness,
        )
    )
