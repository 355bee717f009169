"""Diff-and-apply for a Queue's worker pools, and the operator's 0 <-> 1 activation.

Called from `QueueController` every tick with the pools' Deployments as kopf's index last saw them
(no API request when nothing changes). Each pool's Deployment and its scaler (HPA, or KEDA's
ScaledObject and TriggerAuthentication) are built by `worker_specs` and applied when they differ;
pools gone from the spec are deleted.

Who owns `spec.replicas`: the HPA (or KEDA) once the Deployment exists. The operator sends the
count it observed, so its own applies never move it, except to wake an idle pool (0 -> 1) or to put
it to sleep after `cooldownSeconds` without backlog (1 -> 0) on clusters where the HPA cannot go to
zero itself (feature gate HPAScaleToZero off, found out by the API server refusing minReplicas 0).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from . import worker_specs as ws
from .kube import KubeError, code, now_iso
from .models import QueueResource, WorkerPoolSpec
from .specs import HASH_ANNOTATION, spec_hash

log = logging.getLogger("rankq.operator")


def backlog_of(counts: dict[str, Any] | None, include_delayed: bool) -> int | None:
    """Ready + leased (+ delayed): leased messages keep busy workers from being scaled away."""
    if counts is None:
        return None
    n = int(counts.get("ready", 0)) + int(counts.get("leased", 0))
    if include_delayed:
        n += int(counts.get("delayed", 0))
    return n


def initial_replicas(pool: WorkerPoolSpec, zero_capable: bool) -> int:
    a = pool.autoscaling
    if a.provider == "hpa":
        return ws.hpa_min_replicas(pool, zero_capable) if a.min_replicas > 0 or zero_capable else 0
    return a.min_replicas


@dataclass
class PoolMemory:
    """What the operator remembers of a pool between ticks (not in the API: lost on restart)."""

    idle_since: float | None = None
    last_reason: str | None = None
    last_time: str | None = None
    keda_missing: bool = False  # warned that the cluster does not serve KEDA's kinds
    delayed_ignored: bool = False  # warned that KEDA cannot count all delayed messages


@dataclass
class WorkerPools:
    kube: Any
    zero_capable: bool | None = None  # None until the API server has told us
    memory: dict[str, PoolMemory] = field(default_factory=dict)

    async def reconcile(
        self, q: QueueResource, deployments: list[dict[str, Any]], counts: dict[str, Any] | None, full: bool, event: Any
    ) -> list[dict[str, Any]]:
        """Apply what differs; returns the pools' status entries."""
        by_pool = {
            (d["metadata"].get("labels") or {}).get(ws.POOL_LABEL): d
            for d in deployments
            if d["metadata"].get("deletionTimestamp") is None
        }
        out = []
        for pool in q.spec.workers:
            out.append(await self._pool(q, pool, by_pool.get(pool.name), counts, full, event))
        if full:
            wanted = {p.name for p in q.spec.workers}
            for name, dep in by_pool.items():
                if name not in wanted:
                    await self._remove(q, dep, event)
        for name in list(self.memory):
            if name not in {p.name for p in q.spec.workers}:
                del self.memory[name]
        return out

    async def _pool(
        self,
        q: QueueResource,
        pool: WorkerPoolSpec,
        observed: dict[str, Any] | None,
        counts: dict[str, Any] | None,
        full: bool,
        event: Any,
    ) -> dict[str, Any]:
        mem = self.memory.setdefault(pool.name, PoolMemory())
        backlog = backlog_of(counts, pool.autoscaling.include_delayed)
        now = time.monotonic()
        if backlog:
            mem.idle_since = None
        elif backlog == 0 and mem.idle_since is None:
            mem.idle_since = now
        current = None if observed is None else int((observed.get("spec") or {}).get("replicas") or 0)
        if full or observed is None or mem.keda_missing:  # KEDA may have been installed since
            await self._scaler(q, pool, event)
        replicas = current if current is not None else initial_replicas(pool, bool(self.zero_capable))
        if pool.autoscaling.provider == "none":
            replicas = pool.autoscaling.min_replicas
        reason = None
        if observed is not None and backlog is not None and not self.zero_capable:
            idle_for = 0.0 if mem.idle_since is None else now - mem.idle_since
            step = ws.activation_step(pool, replicas, backlog, idle_for)
            if step is not None and step != replicas:
                reason = (
                    f"backlog {backlog} >= activationBacklog {pool.autoscaling.activation_backlog}: 0 -> 1"
                    if step
                    else f"no backlog for {pool.autoscaling.cooldown_seconds}s: {replicas} -> 0"
                )
                replicas = step
        if observed is None or full or reason or replicas != current:
            desired = ws.build_worker_deployment(q, pool, replicas)
            desired["metadata"]["annotations"] = {HASH_ANNOTATION: spec_hash(ws.build_worker_deployment(q, pool))}
            have = (observed or {}).get("metadata", {}).get("annotations", {}).get(HASH_ANNOTATION)
            if (
                observed is None
                or reason
                or replicas != current
                or have != desired["metadata"]["annotations"][HASH_ANNOTATION]
            ):
                await self.kube.apply(desired)
                verb = "Created" if observed is None else "Updated"
                if reason:
                    mem.last_reason, mem.last_time = reason, now_iso()
                    await event("WorkersActivated" if replicas else "WorkersDeactivated", f"pool {pool.name}: {reason}")
                elif observed is None or have != desired["metadata"]["annotations"][HASH_ANNOTATION]:
                    await event(verb, f"{verb} Deployment {desired['metadata']['name']}")
        status = (observed or {}).get("status") or {}
        return {
            "name": pool.name,
            "desiredReplicas": replicas,
            "replicas": int(status.get("replicas") or 0),
            "readyReplicas": int(status.get("readyReplicas") or 0),
            "backlog": backlog,
            "lastScaleReason": mem.last_reason,
            "lastScaleTime": mem.last_time,
        }

    async def _scaler(self, q: QueueResource, pool: WorkerPoolSpec, event: Any) -> None:
        """Apply the pool's HPA or KEDA objects, and remove those of the other provider."""
        provider = pool.autoscaling.provider
        name = ws.deployment_name(q, pool)
        if provider != "hpa":
            await self.kube.delete("HorizontalPodAutoscaler", q.namespace, name)
        if provider != "keda":
            for kind, child in (("ScaledObject", name), ("TriggerAuthentication", ws.trigger_auth_name(q, pool))):
                await self._delete_optional(kind, q.namespace, child)
        mem = self.memory.setdefault(pool.name, PoolMemory())
        ignored = provider == "keda" and pool.autoscaling.include_delayed
        if ignored and not mem.delayed_ignored:
            await event(
                "IncludeDelayedIgnored",
                f"pool {pool.name}: KEDA reads {ws.KEDA_VALUE_LOCATION} (delayed messages "
                f"only once due); includeDelayed applies to provider hpa only",
                warning=True,
            )
        mem.delayed_ignored = ignored
        if provider != "keda":
            mem.keda_missing = False
        for desired in ws.build_pool_children(q, pool, bool(self.zero_capable)):
            desired["metadata"]["annotations"] = {HASH_ANNOTATION: spec_hash(desired)}
            observed = await self._get_optional(desired["kind"], q.namespace, desired["metadata"]["name"])
            if (
                observed is not None
                and (observed["metadata"].get("annotations") or {}).get(HASH_ANNOTATION)
                == desired["metadata"]["annotations"][HASH_ANNOTATION]
            ):
                continue
            try:
                await self._apply_scaler(q, pool, desired)
            except Exception as err:
                if desired["apiVersion"] != ws.KEDA_API or not _not_found(err):
                    raise
                # No KEDA in this cluster: say so once and keep the rest of the Queue going.
                if not mem.keda_missing:
                    mem.keda_missing = True
                    await event(
                        "KedaNotInstalled",
                        f"pool {pool.name}: autoscaling.provider is keda, but the "
                        f"cluster does not serve {desired['kind']} ({ws.KEDA_API}); install KEDA or use "
                        f"provider hpa",
                        warning=True,
                    )
                return
            mem.keda_missing = False
            await event(
                "Created" if observed is None else "Updated",
                f"{'Created' if observed is None else 'Updated'} {desired['kind']} {desired['metadata']['name']}",
            )

    async def _apply_scaler(self, q: QueueResource, pool: WorkerPoolSpec, desired: dict[str, Any]) -> None:
        if (
            desired["kind"] == "HorizontalPodAutoscaler"
            and pool.autoscaling.min_replicas == 0
            and self.zero_capable is None
        ):
            probe = ws.build_hpa(q, pool, zero_capable=True)
            probe["metadata"]["annotations"] = desired["metadata"]["annotations"]
            try:
                await self.kube.apply(probe)
                self.zero_capable = True
                log.info("the API server accepts HPA minReplicas 0 (HPAScaleToZero): the HPA scales to zero")
                return
            except KubeError as err:
                if code(err) not in (400, 422):
                    raise
                self.zero_capable = False
                log.info("the API server refuses HPA minReplicas 0: the operator moves idle pools 0 <-> 1")
        await self.kube.apply(desired)

    async def _get_optional(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.kube.get(kind, namespace, name)
        except Exception as err:
            if _not_found(err):  # the kind itself is unknown (no KEDA installed)
                return None
            raise

    async def _delete_optional(self, kind: str, namespace: str, name: str) -> None:
        try:
            await self.kube.delete(kind, namespace, name)
        except Exception as err:
            if not _not_found(err):
                raise

    async def _remove(self, q: QueueResource, deployment: dict[str, Any], event: Any) -> None:
        name = deployment["metadata"]["name"]
        await self.kube.delete("Deployment", q.namespace, name)
        await self.kube.delete("HorizontalPodAutoscaler", q.namespace, name)
        await self._delete_optional("ScaledObject", q.namespace, name)
        await self._delete_optional("TriggerAuthentication", q.namespace, f"{name}-token")
        await event("Deleted", f"Deleted worker pool {name} (no longer in spec.workers)")


def _not_found(err: Exception) -> bool:
    """A 404, whether the API server said it about an object or about a kind it does not serve
    (the latter reaches us as the HTTP client's own status error)."""
    if isinstance(err, KubeError):
        return code(err) == 404
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None) == 404


def summary(pools: list[dict[str, Any]]) -> str | None:
    """`ready/desired` over all pools, for the Workers printer column."""
    if not pools:
        return None
    return f"{sum(p['readyReplicas'] for p in pools)}/{sum(p['desiredReplicas'] for p in pools)}"
