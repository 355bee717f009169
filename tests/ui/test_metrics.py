"""/metrics on a live 3-node group: every series the Grafana dashboard queries exists, summing queue
totals over the pods equals the leader's value, and trace ids travel through HTTP and gRPC."""

from __future__ import annotations

import json
import re
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serverproc import Cluster, wait_for

from rankq.server.proto import rankq_pb2 as pb
from rankq.server.proto import rankq_pb2_grpc as pb_grpc

DASHBOARD = Path(__file__).resolve().parents[2] / "helm" / "rankq" / "dashboards" / "rankq.json"
PROMQL_WORDS = {"sum", "by", "rate", "max", "histogram_quantile", "increase", "le", "without", "label_values"}

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    g = Cluster(str(tmp_path_factory.mktemp("metrics-group")), 3, grpc=True).start()
    yield g
    g.stop()


def samples(url: str) -> dict[tuple, float]:
    text = httpx.get(url + "/metrics", timeout=5).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def dashboard_series() -> set[str]:
    names = set()
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = re.sub(r'"[^"]*"|\$\w+|\{[^}]*\}|\[[^\]]*\]', " ", target["expr"])  # matchers, ranges, variables out
            names.update(
                n
                for n in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)
                if n not in PROMQL_WORDS
                and not n.isdigit()
                and n not in ("pod", "queue", "state", "route", "status", "method", "code", "member", "generation")
            )
    return names


def test_every_metric_the_dashboard_queries_exists(group):
    leader = group.leader()
    httpx.post(leader.url + "/api/v1/queues", json={"name": "m"}, timeout=10).raise_for_status()
    httpx.post(leader.url + "/api/v1/queues/m/messages", json={"payload": 1}, timeout=10).raise_for_status()
    with grpc.insecure_channel(f"127.0.0.1:{leader.grpc_port}") as ch:
        pb_grpc.RankQStub(ch).ListQueues(pb.ListQueuesRequest(), timeout=5)
    names = {name for name, _ in samples(leader.url)}
    wanted = dashboard_series()
    assert "rankq_queue_backlog" in wanted and "rankq_http_request_duration_seconds_bucket" in wanted
    assert sorted(wanted - names) == []
    for route, _ in [
        (dict(k[1]).get("route"), v) for k, v in samples(leader.url).items() if k[0] == "rankq_http_requests_total"
    ]:
        assert "{name}" in route or "/m/" not in route, "routes are labelled by template, not raw path"


def test_sum_over_pods_equals_the_leader(group):
    leader = group.leader()
    httpx.post(leader.url + "/api/v1/queues", json={"name": "summed"}, timeout=10)
    follower = group.followers()[0]
    with httpx.Client(base_url=follower.url, timeout=10) as c:
        for i in range(7):
            assert c.post("/api/v1/queues/summed/messages", json={"payload": i}).status_code == 201
    key = ("rankq_queue_events_total", (("event", "enqueued"), ("queue", "summed")))
    wait_for(lambda: samples(leader.url).get(key) == 7, 10, "the leader to count 7 enqueues")
    # every member has applied them too, so a role-blind exporter would report 21 in total
    for n in group.nodes:
        wait_for(
            lambda n=n: httpx.get(f"{n.url}/api/v1/queues/summed", timeout=5).json()["totals"]["enqueued"] == 7,
            10,
            "replication",
        )
    per_pod = [samples(n.url) for n in group.nodes]
    assert sum(p.get(key, 0) for p in per_pod) == 7
    ready = ("rankq_queue_messages", (("queue", "summed"), ("state", "ready")))
    assert sum(p.get(ready, 0) for p in per_pod) == 7
    assert sum(p.get(("rankq_raft_leader", ()), 0) for p in per_pod) == 1
    lead = samples(leader.url)
    lags = {k: v for k, v in lead.items() if k[0] == "rankq_raft_member_lag_entries"}
    assert len(lags) == 3 and all(v >= 0 for v in lags.values())


def test_request_ids_are_echoed_and_logged(group):
    leader = group.leader()
    r = httpx.get(leader.url + "/api/v1/queues", headers={"x-request-id": "trace-http-1"}, timeout=5)
    assert r.headers["x-request-id"] == "trace-http-1"
    assert len(httpx.get(leader.url + "/healthz", timeout=5).headers["x-request-id"]) >= 8  # assigned when absent
    with grpc.insecure_channel(f"127.0.0.1:{leader.grpc_port}") as ch:
        _, call = pb_grpc.RankQStub(ch).ListQueues.with_call(
            pb.ListQueuesRequest(), timeout=5, metadata=(("x-request-id", "trace-grpc-1"),)
        )
        assert ("x-request-id", "trace-grpc-1") in tuple(call.initial_metadata())
        with pytest.raises(grpc.RpcError) as refused:
            pb_grpc.RankQStub(ch).GetQueue(pb.GetQueueRequest(name="no-such-queue"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    wait_for(
        lambda: "Completed GET request for /api/v1/queues with status 200" in leader.logs(), 5, "the completion line"
    )
    calls = samples(leader.url)
    assert calls.get(("rankq_grpc_requests_total", (("code", "OK"), ("method", "ListQueues"))), 0) >= 1
    assert calls.get(("rankq_grpc_requests_total", (("code", "NOT_FOUND"), ("method", "GetQueue"))), 0) == 1
