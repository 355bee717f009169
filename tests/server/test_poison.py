"""No poison messages: whatever the API accepts can be read, dequeued, dead-lettered, listed,
redriven and acked again, over HTTP and gRPC alike; whatever it cannot deliver it refuses at once
with a 4xx that changes nothing.

Messages are hypothesis-generated from the values that once poisoned a queue: lone surrogates in
payloads, headers, groups and dedup keys, NaN and Infinity, priorities and times past int64,
nesting past the limit, invalid UTF-8.
"""

from __future__ import annotations

import base64
import itertools
import json
from datetime import UTC, datetime, timedelta

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankq.server.proto import rankq_pb2 as pb

pytestmark = pytest.mark.timeout(600)

POISON = settings(
    max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
_queues = itertools.count()

# Text with everything Python strings can hold, lone surrogates included.
texts = st.text(st.characters(codec=None, categories=None), max_size=12) | st.sampled_from(
    ["\ud800", "a\udfff", "\U0001f600"]
)
numbers = st.integers(-(2**70), 2**70) | st.floats() | st.sampled_from([2**63 - 1, -(2**63), 2**63, float("nan")])
json_values = st.recursive(
    st.none() | st.booleans() | numbers | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=10,
)


def nested(n: int):
    value: list = []
    for _ in range(n - 1):
        value = [value]
    return value


payloads = json_values | st.sampled_from([nested(64), nested(65), {"a": nested(63)}, "x" * 300_000])
times = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)).map(
        lambda d: d.isoformat()
    ),
    st.sampled_from(
        ["2030-01-01T00:00:00", "0001-01-01T00:30:00+01:00", "9999-12-31T23:59:59-01:00", "1969-12-31T23:59:59Z"]
    ),
)
http_messages = st.fixed_dictionaries(
    {"payload": payloads},
    optional={
        "headers": st.dictionaries(texts, texts, max_size=3),
        "priority": st.integers(-(2**64), 2**64) | st.booleans(),
        "group": texts,
        "dedup_key": texts,
        "deliver_at": times,
        "delay": st.sampled_from([0, 0.5, 1e305]),
    },
)


@pytest.fixture(scope="module")
def server(grpc_server):
    return grpc_server


def ok(r: httpx.Response, status: int = 200) -> dict:
    assert r.status_code == status, (r.request.method, r.request.url, r.status_code, r.text[:500])
    return r.json() if r.content else {}


def new_queue(api) -> str:
    name = f"poison-{next(_queues)}"
    ok(api.post("/queues", json={"name": name, "max_deliveries": 1, "visibility_timeout": 3600}), 201)
    return name


def full_cycle(api, stub, q: str, mid: int, delayed: bool) -> dict:
    """Read, dequeue, dead-letter, list, redrive, dequeue (gRPC), ack: every step must succeed."""
    first = ok(api.get(f"/queues/{q}/messages/{mid}"))
    stub.GetMessage(pb.GetMessageRequest(queue=q, id=mid))
    if delayed:
        assert first["state"] == "delayed"
        ok(api.delete(f"/queues/{q}/messages/{mid}"))
        return first
    [m] = ok(api.post(f"/queues/{q}/dequeue", json={"max": 10}))["messages"]
    assert m["id"] == mid
    assert (
        ok(api.post(f"/queues/{q}/messages/{mid}/nack", json={"lease_token": m["lease_token"], "error": "x"}))["state"]
        == "dead"
    )
    [dead] = ok(api.get(f"/queues/{q}/dlq"))["messages"]
    assert dead["id"] == mid
    [dead_grpc] = stub.ListDeadLetters(pb.ListDeadLettersRequest(queue=q)).messages
    assert dead_grpc.id == mid
    assert ok(api.post(f"/queues/{q}/dlq/redrive", json={"ids": [mid]}))["redriven"] == [mid]
    [again] = stub.Dequeue(pb.DequeueRequest(queue=q, max=10)).messages
    assert again.id == mid and dict(again.headers) == (m["headers"] or {})
    stub.Ack(pb.AckRequest(queue=q, id=mid, lease_token=again.lease_token, result_json='{"done": true}'))
    assert ok(api.get(f"/queues/{q}/messages/{mid}"))["state"] == "acked"
    return m


def test_every_message_http_accepts_goes_the_whole_way(api, stub):
    @POISON
    @given(http_messages)
    def run(message):
        q = new_queue(api)
        body = json.dumps(message).encode()  # lone surrogates travel as \ud800 escapes, NaN as NaN
        r = api.post(f"/queues/{q}/messages", content=body, headers={"content-type": "application/json"})
        assert r.status_code in (201, 413, 422), (r.status_code, r.text[:300])
        assert isinstance(r.json()["detail" if r.status_code != 201 else "id"], (str, int))
        if r.status_code != 201:
            assert ok(api.get(f"/queues/{q}"))["counts"]["ready"] == 0
        else:
            mid = r.json()["id"]
            at = message.get("deliver_at")
            delayed = message.get("delay", 0) > 0 or (at is not None and datetime.fromisoformat(at) > datetime.now(UTC))
            m = full_cycle(api, stub, q, mid, delayed)
            if not delayed:
                assert m["payload"] == json.loads(json.dumps(message["payload"]))
                assert (m["headers"] or {}) == message.get("headers", {})
        ok(api.delete(f"/queues/{q}"), 204)

    run()


grpc_messages = st.builds(
    pb.NewMessage,
    payload=st.binary(max_size=40)
    | json_values.map(lambda v: json.dumps(v, allow_nan=True).encode("utf-8", "surrogatepass"))
    | st.sampled_from([b"\xed\xa0\x80", b'"\xed\xa0\x80"', b"[" * 70 + b"]" * 70]),
    content_type=st.sampled_from(["", "application/json", "application/octet-stream", "text/plain"]),
    priority=st.integers(-(2**63), 2**63 - 1),
    headers=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
    deliver_at=st.sampled_from([0, 1, -(2**63), 2**63 - 1, 253_402_300_799_999, 253_402_300_800_000]),
)


def test_every_message_grpc_accepts_goes_the_whole_way(api, stub):
    @POISON
    @given(grpc_messages)
    def run(message):
        q = new_queue(api)
        try:
            mid = stub.Enqueue(pb.EnqueueRequest(queue=q, message=message)).id
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
            assert ok(api.get(f"/queues/{q}"))["counts"]["ready"] == 0
        else:
            delayed = message.deliver_at > datetime.now(UTC).timestamp() * 1000
            m = full_cycle(api, stub, q, mid, delayed)
            if not delayed:
                if m.get("payload_base64") is not None:
                    assert base64.b64decode(m["payload_base64"]) == message.payload
                else:
                    assert m["payload"] == json.loads(message.payload)
        ok(api.delete(f"/queues/{q}"), 204)

    run()


def test_listing_keeps_working_with_every_kind_of_message(api, stub):
    """One queue holding the edge cases at once still lists, over both APIs."""
    q = new_queue(api)
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    bodies = [
        {"payload": nested(64)},
        {"payload": "\U0001f600", "headers": {"\u00e9": "\U0001f600"}},
        {"payload": 1, "priority": 2**63 - 1},
        {"payload": 1, "priority": -(2**63)},
        {"payload": 1, "deliver_at": "9999-12-31T23:59:59.999Z"},
        {"payload": 1, "deliver_at": future},
    ]
    for body in bodies:
        ok(api.post(f"/queues/{q}/messages", json=body), 201)
    got = ok(api.post(f"/queues/{q}/dequeue", json={"max": 10}))["messages"]
    assert len(got) == 4
    for m in got:
        ok(api.post(f"/queues/{q}/messages/{m['id']}/nack", json={"lease_token": m["lease_token"]}))
    assert len(ok(api.get(f"/queues/{q}/dlq"))["messages"]) == 4
    assert len(stub.ListDeadLetters(pb.ListDeadLettersRequest(queue=q)).messages) == 4
    assert q in [x.name for x in stub.ListQueues(pb.ListQueuesRequest()).queues]
    assert len(ok(api.post(f"/queues/{q}/dlq/redrive", json={}))["redriven"]) == 4
