"""The operator's side of worker pools against an in-memory API: children, activation, removal."""

from __future__ import annotations

import asyncio

import httpx
from test_access import MemoryKube

from rankq.operator.models import QueueResource
from rankq.operator.workers import WorkerPools, summary


class Kube(MemoryKube):
    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        return self.objects.pop((kind, name), None) is not None


def queue(pools: list[dict]) -> QueueResource:
    return QueueResource.from_body(
        {
            "apiVersion": "rankq.io/v1alpha1",
            "kind": "Queue",
            "metadata": {"name": "orders", "namespace": "shop", "uid": "u-1", "generation": 1},
            "spec": {"workers": pools},
        }
    )


POOL = {
    "name": "mail",
    "handler": "app:handle",
    "autoscaling": {"minReplicas": 0, "maxReplicas": 10, "targetBacklogPerReplica": 100, "cooldownSeconds": 0},
}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_pool_children_activation_and_removal():
    kube = Kube()
    pools = WorkerPools(kube, zero_capable=False)
    events: list[tuple[str, str]] = []

    async def event(reason: str, message: str) -> None:
        events.append((reason, message))

    q = queue([POOL])
    status = run(pools.reconcile(q, [], {"ready": 0, "leased": 0}, True, event))
    dep = kube.objects[("Deployment", "orders-mail")]
    hpa = kube.objects[("HorizontalPodAutoscaler", "orders-mail")]
    assert dep["spec"]["replicas"] == 0 and hpa["spec"]["minReplicas"] == 1  # idle pool starts asleep
    assert status[0]["desiredReplicas"] == 0

    # Backlog appears: the operator wakes the pool (0 -> 1); the HPA takes it from there.
    status = run(pools.reconcile(q, [dep], {"ready": 500, "leased": 0}, False, event))
    assert kube.objects[("Deployment", "orders-mail")]["spec"]["replicas"] == 1
    assert events[-1][0] == "WorkersActivated" and status[0]["lastScaleReason"].endswith("0 -> 1")

    # The HPA scaled to 5; while work is leased nothing is touched.
    dep = {
        **kube.objects[("Deployment", "orders-mail")],
        "spec": {**dep["spec"], "replicas": 5},
        "status": {"replicas": 5, "readyReplicas": 5},
    }
    n = len(events)
    status = run(pools.reconcile(q, [dep], {"ready": 0, "leased": 40}, False, event))
    assert len(events) == n and status[0]["replicas"] == 5 and summary(status) == "5/5"

    # Empty for the cooldown (0 s here): back to zero.
    run(pools.reconcile(q, [dep], {"ready": 0, "leased": 0}, False, event))
    run(pools.reconcile(q, [dep], {"ready": 0, "leased": 0}, False, event))
    assert kube.objects[("Deployment", "orders-mail")]["spec"]["replicas"] == 0
    assert events[-1][0] == "WorkersDeactivated"

    # The pool leaves the spec: its Deployment and HPA go.
    run(pools.reconcile(queue([]), [dep], None, True, event))
    assert ("Deployment", "orders-mail") not in kube.objects and (
        "HorizontalPodAutoscaler",
        "orders-mail",
    ) not in kube.objects


def test_with_scale_to_zero_the_hpa_owns_zero_and_keda_replaces_it():
    kube = Kube()
    pools = WorkerPools(kube)  # the in-memory API accepts minReplicas 0, as with HPAScaleToZero

    async def event(reason: str, message: str) -> None:
        pass

    run(pools.reconcile(queue([POOL]), [], {"ready": 0, "leased": 0}, True, event))
    assert pools.zero_capable is True
    assert kube.objects[("HorizontalPodAutoscaler", "orders-mail")]["spec"]["minReplicas"] == 0
    dep = kube.objects[("Deployment", "orders-mail")]
    run(pools.reconcile(queue([POOL]), [dep], {"ready": 900, "leased": 0}, False, event))
    assert kube.objects[("Deployment", "orders-mail")]["spec"]["replicas"] == 0  # the HPA wakes it, not us

    keda = {**POOL, "autoscaling": {**POOL["autoscaling"], "provider": "keda"}}
    run(pools.reconcile(queue([keda]), [dep], None, True, event))
    kinds = {k for k, _ in kube.objects}
    assert "HorizontalPodAutoscaler" not in kinds and {"ScaledObject", "TriggerAuthentication"} <= kinds


def test_a_cluster_without_keda_gets_one_warning_and_the_pool_still_runs():
    class NoKeda(Kube):
        async def apply(self, obj: dict) -> dict:
            if obj["apiVersion"].startswith("keda.sh/"):  # the API server has no such resource: 404
                request = httpx.Request("PATCH", "https://k8s/apis/keda.sh/v1alpha1/x")
                raise httpx.HTTPStatusError("404", request=request, response=httpx.Response(404, request=request))
            return await super().apply(obj)

    kube = NoKeda()
    pools = WorkerPools(kube, zero_capable=False)
    events: list[tuple[str, str, bool]] = []

    async def event(reason: str, message: str, warning: bool = False) -> None:
        events.append((reason, message, warning))

    keda = {**POOL, "autoscaling": {**POOL["autoscaling"], "provider": "keda"}}
    run(pools.reconcile(queue([keda]), [], None, True, event))
    dep = kube.objects[("Deployment", "orders-mail")]
    run(pools.reconcile(queue([keda]), [dep], None, True, event))
    warnings = [e for e in events if e[2]]
    assert [w[0] for w in warnings] == ["KedaNotInstalled"]  # once, not on every tick
    assert "keda.sh/v1alpha1" in warnings[0][1]
    # KEDA installed later: the next tick creates its objects without a change to the Queue.
    kube.__class__ = Kube
    run(pools.reconcile(queue([keda]), [dep], None, False, event))
    assert {("ScaledObject", "orders-mail"), ("TriggerAuthentication", "orders-mail-token")} <= set(kube.objects)


def test_include_delayed_with_keda_is_flagged_once():
    pools = WorkerPools(Kube(), zero_capable=False)
    events: list[tuple[str, bool]] = []

    async def event(reason: str, message: str, warning: bool = False) -> None:
        events.append((reason, warning))

    keda = {**POOL, "autoscaling": {**POOL["autoscaling"], "provider": "keda", "includeDelayed": True}}
    for _ in range(3):
        run(pools.reconcile(queue([keda]), [], None, True, event))
    assert events.count(("IncludeDelayedIgnored", True)) == 1
