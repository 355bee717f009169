"""kopf wiring: watch Queues, run one reconcile loop per Queue while this instance holds the Lease.

Handlers only record the latest body and wake the loop; `reconcile.QueueController` does the work.
No finalizers are added (`on.event` handlers need none): deletion is garbage collection through
owner references, so deleting a Queue works even when its group or the operator is down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import kopf

from .endpoints import Endpoints, FileEndpoints
from .kube import Kube, KubeError
from .models import GROUP, PLURAL, VERSION
from .reconcile import QueueController

log = logging.getLogger("rankq.operator")

TICK = 1.0  # seconds between reconcile ticks of one Queue
LEASE_NAME = "rankq-operator"
LEASE_SECONDS = 15
RENEW_EVERY = 3.0


@dataclass
class Settings:
    namespace: str = field(default_factory=lambda: os.environ.get("POD_NAMESPACE") or "default")  # of the Lease
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}")
    endpoints_file: str | None = None


@dataclass
class Entry:
    body: dict[str, Any]
    wake: asyncio.Event
    task: asyncio.Task | None = None


class Operator:
    """The per-process state the handlers share."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kube: Kube | None = None
        self.http: httpx.AsyncClient | None = None
        self.endpoints: Endpoints = FileEndpoints(settings.endpoints_file) if settings.endpoints_file else Endpoints()
        self.queues: dict[tuple[str, str], Entry] = {}
        self.leading = asyncio.Event()
        self.lease_task: asyncio.Task | None = None

    async def start(self) -> None:
        self.kube = Kube()
        self.http = httpx.AsyncClient(timeout=5)
        self.lease_task = asyncio.create_task(self.hold_lease(), name="lease")

    async def stop(self) -> None:
        for entry in self.queues.values():
            if entry.task:
                entry.task.cancel()
        if self.lease_task:
            self.lease_task.cancel()
        await self.release_lease()
        if self.http:
            await self.http.aclose()

    # -- only one operator acts at a time --

    async def hold_lease(self) -> None:
        """Acquire and renew a coordination.k8s.io Lease; act only while holding it."""
        me = self.settings.identity
        ns = self.settings.namespace
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
        now = datetime.now(timezone.utc)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lease = await self.kube.get("Lease", ns, LEASE_NAME)
        spec = {"holderIdentity": me, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": stamp}
        if lease is None:
            try:
                await self.kube.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                        "metadata": {"name": LEASE_NAME, "namespace": ns},
                                        "spec": {**spec, "acquireTime": stamp}})
                return True
            except KubeError as err:
                if err.status == 409:
                    return False
                raise
        cur = lease.get("spec") or {}
        holder = cur.get("holderIdentity")
        renew = cur.get("renewTime")
        expired = True
        if renew:
            renewed = datetime.fromisoformat(renew.replace("Z", "+00:00"))
            expired = now - renewed > timedelta(seconds=cur.get("leaseDurationSeconds") or LEASE_SECONDS)
        if holder not in (me, None, "") and not expired:
            return False
        if holder != me:
            spec["acquireTime"] = stamp
        body = {**lease, "spec": {**cur, **spec}}
        try:
            # PUT with the resourceVersion we read: a concurrent taker makes this fail with 409.
            await self.kube.request("PUT", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{LEASE_NAME}",
                                    body=body)
            return True
        except KubeError as err:
            if err.status == 409:
                return False
            raise

    async def release_lease(self) -> None:
        if not self.leading.is_set() or self.kube is None:
            return
        try:
            lease = await self.kube.get("Lease", self.settings.namespace, LEASE_NAME)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.settings.identity:
                lease["spec"]["holderIdentity"] = None
                await self.kube.request(
                    "PUT", f"/apis/coordination.k8s.io/v1/namespaces/{self.settings.namespace}/leases/{LEASE_NAME}",
                    body=lease)
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass

    # -- one loop per Queue --

    def seen(self, body: dict[str, Any], deleted: bool) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        entry = self.queues.get(key)
        if deleted or body["metadata"].get("deletionTimestamp"):
            if entry is not None:
                if entry.task:
                    entry.task.cancel()
                del self.queues[key]
            return
        if entry is None or entry.body["metadata"].get("uid") != body["metadata"].get("uid"):
            if entry is not None and entry.task:
                entry.task.cancel()
            entry = Entry(body=body, wake=asyncio.Event())
            entry.task = asyncio.create_task(self.loop(key, entry), name=f"queue {key[0]}/{key[1]}")
            self.queues[key] = entry
        else:
            generation_moved = entry.body["metadata"].get("generation") != body["metadata"].get("generation")
            entry.body = body
            if generation_moved:
                entry.wake.set()

    async def loop(self, key: tuple[str, str], entry: Entry) -> None:
        controller = QueueController(self.kube, self.endpoints, self.http)
        while True:
            await self.leading.wait()
            try:
                await controller.tick(entry.body)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bug must not end the loop; it is logged and retried
                log.exception("%s/%s: reconcile failed", *key)
            entry.wake.clear()
            try:
                await asyncio.wait_for(entry.wake.wait(), TICK)
            except asyncio.TimeoutError:
                pass


OPERATOR: Operator | None = None


def register(settings: Settings) -> kopf.OperatorRegistry:
    """A registry with the operator's handlers (no module-level side effects on import)."""
    registry = kopf.OperatorRegistry()
    state = Operator(settings)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        global OPERATOR
        settings.watching.server_timeout = 60
        settings.watching.client_timeout = 90
        settings.persistence.finalizer = f"{GROUP}/finalizer"
        settings.posting.level = logging.WARNING
        # Resources are resolved once through discovery: no need to watch CRDs (least privilege).
        settings.scanning.disabled = True
        await state.start()
        OPERATOR = state

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await state.stop()

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def queue_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
        state.seen(_plain(body), deleted=event.get("type") == "DELETED")

    return registry


def _plain(body: Any) -> dict[str, Any]:
    """A detached deep copy of a kopf body."""
    import copy

    return copy.deepcopy(dict(body))


def run(settings: Settings, namespaces: list[str] | None = None, liveness: str | None = None) -> None:
    registry = register(settings)
    asyncio.run(kopf.operator(
        registry=registry,
        standalone=True,  # no kopf peering: the Lease above decides who acts
        clusterwide=not namespaces,
        namespaces=namespaces or (),
        liveness_endpoint=liveness,
    ))
