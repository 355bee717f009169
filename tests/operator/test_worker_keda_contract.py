"""What KEDA's metrics-api trigger reads from a real `rankq server`, as the ScaledObject says.

KEDA's controller does not run in these tests; this checks its side of the contract instead: the
request the trigger's metadata describes (the URL's path, `Authorization: Bearer` with the
consume token the TriggerAuthentication points at) is answered by a real server, and the value at
`valueLocation` is the backlog (ready + leased; a delayed message not yet due is not counted).
"""

from __future__ import annotations

import math
from urllib.parse import urlsplit

import httpx
import pytest
from serverproc import ServerProcess

from rankq.operator import worker_specs as ws
from rankq.operator.models import QueueResource

ALL, CONSUME = "all-scopes-token-for-setup", "consume-token-keda-uses"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("keda")
    (root / "tokens").write_text(ALL + "\n")
    (root / "consume").write_text(CONSUME + "\n")
    srv = ServerProcess(
        str(root / "node"),
        extra=["--api-token-file", str(root / "tokens"), "--consume-token-file", str(root / "consume")],
    ).start()
    yield srv
    srv.stop()


def value_at(document: dict, location: str):
    """A plain dotted GJSON path (all valueLocation uses): one key per segment."""
    for key in location.split("."):
        document = document[key]
    return document


def test_the_trigger_reads_the_backlog_with_the_consume_token(server):
    q = QueueResource.from_body(
        {
            "apiVersion": "rankq.io/v1alpha1",
            "kind": "Queue",
            "metadata": {"name": "shop", "namespace": "ns"},
            "spec": {
                "queue": {"name": "orders"},
                "auth": {"consume": {"name": "workers"}},
                "workers": [
                    {
                        "name": "mail",
                        "handler": "app:handle",
                        "autoscaling": {"provider": "keda", "targetBacklogPerReplica": 2, "activationBacklog": 5},
                    }
                ],
            },
        }
    )
    pool = q.spec.workers[0]
    auth, so = ws.build_pool_children(q, pool)
    trigger = so["spec"]["triggers"][0]
    meta = trigger["metadata"]
    assert auth["spec"]["secretTargetRef"][0]["name"] == "workers"  # the consume token's Secret

    api = server.url + "/api/v1"
    admin = {"Authorization": f"Bearer {ALL}"}
    assert httpx.post(f"{api}/queues", json={"name": "orders"}, headers=admin).status_code == 201
    messages = [{"payload": i} for i in range(7)] + [{"payload": "later", "delay": 3600}] * 2
    assert (
        httpx.post(f"{api}/queues/orders/messages/batch", json={"messages": messages}, headers=admin).status_code == 201
    )
    leased = httpx.post(f"{api}/queues/orders/dequeue", json={"max": 3}, headers=admin).json()["messages"]
    assert len(leased) == 3

    # The request KEDA makes: the URL's path on this server, the TriggerAuthentication's token as bearer.
    url = server.url + urlsplit(meta["url"]).path
    assert meta["authMode"] == "bearer" and meta["format"] == "json"
    assert httpx.get(url).status_code == 401  # without the token KEDA would read nothing
    r = httpx.get(url, headers={"Authorization": f"Bearer {CONSUME}"})
    assert r.status_code == 200
    value = value_at(r.json(), meta["valueLocation"])
    assert value == 7  # 4 ready + 3 leased; the 2 delayed messages are not due

    # KEDA: replicas = ceil(value / targetValue); active while value > activationTargetValue.
    assert math.ceil(value / float(meta["targetValue"])) == 4
    assert value > float(meta["activationTargetValue"])  # 7 >= activationBacklog 5
    assert not 4 > float(meta["activationTargetValue"])  # a backlog of 4 would leave the pool asleep
