"""Worker pools in the Queue CR: the Deployment, the HPA or KEDA objects, and 0 <-> 1 activation."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from rankq.operator import specs
from rankq.operator import worker_specs as ws
from rankq.operator.models import QueueResource


def queue(workers: list[dict], spec: dict | None = None) -> QueueResource:
    return QueueResource.from_body(
        {
            "apiVersion": "rankq.io/v1alpha1",
            "kind": "Queue",
            "metadata": {"name": "orders", "namespace": "shop", "uid": "u-1", "generation": 1},
            "spec": {**(spec or {}), "workers": workers},
        }
    )


POOL = {
    "name": "mail",
    "handler": "myapp.tasks:send_email",
    "concurrency": 16,
    "autoscaling": {"minReplicas": 0, "maxReplicas": 10, "targetBacklogPerReplica": 100},
}


def test_deployment_runs_the_handler_against_the_leader_with_a_consume_token():
    q = queue(
        [
            {
                **POOL,
                "drainTimeoutSeconds": 45,
                "env": [{"name": "X", "value": "1"}],
                "nodeSelector": {"pool": "workers"},
            }
        ],
        {"auth": {"consume": {"name": "workers-token"}}},
    )
    pool = q.spec.workers[0]
    d = ws.build_worker_deployment(q, pool)
    assert d["metadata"]["name"] == "orders-mail" and "replicas" not in d["spec"]  # the HPA owns the count
    pod = d["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["args"][:4] == ["worker", "myapp.tasks:send_email", "--queue", "orders"]
    assert "http://orders.shop.svc:8080" in c["args"] and c["args"][c["args"].index("--concurrency") + 1] == "16"
    assert c["env"][0] == {
        "name": "RANKQ_API_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "workers-token", "key": "token"}},
    }
    assert {"name": "X", "value": "1"} in c["env"]
    assert pod["terminationGracePeriodSeconds"] == 60 and pod["nodeSelector"] == {"pool": "workers"}
    # Worker pods are never selected as servers (leader Service, PDB, the operator's pod index).
    server_selector = specs.selector_labels(q)
    labels = d["spec"]["template"]["metadata"]["labels"]
    assert not all(labels.get(k) == v for k, v in server_selector.items())
    assert ws.build_worker_deployment(q, pool, replicas=0)["spec"]["replicas"] == 0


def test_hpa_scales_on_the_external_backlog_metric_as_average_value():
    q = queue([POOL])
    hpa = ws.build_hpa(q, q.spec.workers[0])
    metric = hpa["spec"]["metrics"][0]["external"]
    assert metric["metric"] == {
        "name": "rankq_queue_backlog",
        "selector": {"matchLabels": {"rankq.io/queue": "orders"}},
    }
    assert metric["target"] == {"type": "AverageValue", "averageValue": "100"}
    assert hpa["spec"]["minReplicas"] == 1  # the operator handles 0 <-> 1 without HPAScaleToZero
    assert ws.build_hpa(q, q.spec.workers[0], zero_capable=True)["spec"]["minReplicas"] == 0
    # replicas = ceil(backlog / target): 1,000 queued with target 100 -> 10
    assert math.ceil(1000 / int(metric["target"]["averageValue"])) == 10


def test_keda_mode_builds_a_scaled_object_and_its_token_and_no_hpa():
    q = queue([{**POOL, "autoscaling": {**POOL["autoscaling"], "provider": "keda", "includeDelayed": True}}])
    children = ws.build_pool_children(q, q.spec.workers[0])
    assert [c["kind"] for c in children] == ["TriggerAuthentication", "ScaledObject"]
    trigger = children[1]["spec"]["triggers"][0]
    assert trigger["type"] == "metrics-api" and trigger["metadata"]["authMode"] == "bearer"
    assert trigger["metadata"]["url"] == "http://orders.shop.svc:8080/api/v1/queues/orders"
    assert trigger["metadata"]["valueLocation"] == "counts.backlog"
    assert trigger["authenticationRef"]["name"] == children[0]["metadata"]["name"]
    assert children[0]["spec"]["secretTargetRef"][0]["name"] == "orders-token"


def test_keda_trigger_follows_the_pool_target_activation_cooldown_and_behavior():
    behavior = {"scaleDown": {"stabilizationWindowSeconds": 30}}
    q = queue(
        [
            {
                **POOL,
                "autoscaling": {
                    "provider": "keda",
                    "minReplicas": 0,
                    "maxReplicas": 7,
                    "targetBacklogPerReplica": 50,
                    "activationBacklog": 5,
                    "cooldownSeconds": 120,
                    "behavior": behavior,
                },
            }
        ],
        {"auth": {"consume": {"name": "workers", "key": "t"}}, "tls": {"generate": True}},
    )
    auth, so = ws.build_pool_children(q, q.spec.workers[0])
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "token", "name": "workers", "key": "t"}]
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "orders-mail"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"], spec["cooldownPeriod"]) == (0, 7, 120)
    meta = spec["triggers"][0]["metadata"]
    # KEDA wakes a pool when the value is above activationTargetValue: a backlog of 5 must wake it, 4 not.
    assert meta["targetValue"] == "50" and meta["activationTargetValue"] == "4"
    assert meta["url"] == "https://orders.shop.svc:8080/api/v1/queues/orders"
    assert all(isinstance(v, str) for v in meta.values())  # the CRD's metadata is a map of strings
    assert spec["advanced"] == {"horizontalPodAutoscalerConfig": {"behavior": behavior}}


@pytest.mark.parametrize(
    ("replicas", "backlog", "idle", "step"),
    [(0, 0, 0, None), (0, 1, 0, 1), (3, 0, 100, None), (1, 0, 300, 0), (1, 5, 1000, None), (2, 0, 299, None)],
)
def test_activation_moves_zero_to_one_and_back_after_the_cooldown(replicas, backlog, idle, step):
    q = queue([{**POOL, "autoscaling": {**POOL["autoscaling"], "cooldownSeconds": 300}}])
    assert ws.activation_step(q.spec.workers[0], replicas, backlog, idle) == step


def test_invalid_pools_are_refused_with_clear_messages():
    for bad in (
        {**POOL, "handler": "no-colon"},
        {**POOL, "name": "Bad_Name"},
        {**POOL, "autoscaling": {"provider": "magic"}},
        {**POOL, "concurrency": 0},
        {**POOL, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
    ):
        with pytest.raises(ValidationError):
            queue([bad])
