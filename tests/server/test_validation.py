"""Bad input at the edge: a clear 4xx (gRPC: INVALID_ARGUMENT) that changes nothing, never a 5xx.

Each case here was once accepted and then broke later requests (a message no dequeue could
deliver, a batch of other clients' writes failed with it) or was answered with a 5xx.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

import grpc
import httpx
import pytest

from rankq.engine.config import INT64_MAX, MAX_JSON_DEPTH, MAX_PAYLOAD_BYTES
from rankq.server.proto import rankq_pb2 as pb

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(grpc_server):
    return grpc_server


def post_raw(api, path: str, text: str | bytes) -> httpx.Response:
    body = text.encode() if isinstance(text, str) else text
    return api.post(path, content=body, headers={"content-type": "application/json"})


def make_queue(api, name: str, **settings) -> None:
    r = api.post("/queues", json={"name": name, **settings})
    assert r.status_code == 201, r.text


def counts(api, name: str) -> dict:
    return api.get(f"/queues/{name}").json()["counts"]


def commit_index(api) -> int:
    return api.get("/cluster").json()["commit_index"]


def deep(n: int) -> str:
    return "[" * n + "]" * n


def test_values_that_once_poisoned_a_queue_are_refused(api):
    make_queue(api, "poison", max_deliveries=1)
    before = counts(api, "poison")
    refused = [
        '{"payload": 1, "headers": {"h": "\\ud800"}}',  # lone surrogate in a header value
        '{"payload": 1, "headers": {"\\udfff": "v"}}',  # ... and in a header name
        '{"payload": "\\ud800"}',  # ... and in the payload
        '{"payload": {"\\ud800": 1}}',
        '{"payload": 1, "group": "\\ud800"}',
        '{"payload": 1, "dedup_key": "a\\udc00"}',
        '{"payload": 1, "priority": %d}' % (INT64_MAX + 1),
        '{"payload": 1, "priority": %d}' % (-(2**63) - 1),
        '{"payload": 1, "priority": true}',  # no coercion of true to 1
        '{"payload": 1, "priority": "1"}',
        '{"payload": 1, "priority": 1.5}',
        '{"payload": 1, "priority": 1.0}',
        '{"payload": 1, "deliver_at": "2030-01-01T00:00:00"}',  # no zone: refused, not guessed
        '{"payload": 1, "deliver_at": 1893456000}',
        '{"payload": 1, "deliver_at": "9999-12-31T23:59:59-14:00"}',  # after year 9999 in UTC
        '{"payload": 1, "delay": 1e305}',
        '{"payload": 1, "delay": Infinity}',
        '{"payload": NaN}',
        '{"payload": [Infinity]}',
        '{"payload": %s}' % deep(MAX_JSON_DEPTH + 1),
        '{"payload": %s}' % deep(5000),
        '{"payload": %s}' % deep(100_000),
    ]
    for text in refused:
        r = post_raw(api, "/queues/poison/messages", text)
        assert r.status_code == 422, (text[:80], r.status_code, r.text[:300])
        assert isinstance(r.json()["detail"], str)
        r = post_raw(api, "/queues/poison/messages/batch", '{"messages": [{"payload": 0}, %s]}' % text)
        assert r.status_code == 422, (text[:80], r.status_code, r.text[:300])
    assert counts(api, "poison") == before

    # The edges of what is accepted can all be delivered, listed as dead letters and redriven.
    accepted = [
        {"payload": deep_list(MAX_JSON_DEPTH), "priority": INT64_MAX},
        {"payload": "\U0001f600 \u00e9", "priority": -(2**63), "headers": {"\u00e9": "\U0001f600"}},
        {"payload": 1, "deliver_at": "2000-01-01T00:00:00+01:00"},
    ]
    for body in accepted:
        assert api.post("/queues/poison/messages", json=body).status_code == 201
    got = api.post("/queues/poison/dequeue", json={"max": 10}).json()["messages"]
    assert len(got) == 3
    for m in got:
        r = api.post(f"/queues/poison/messages/{m['id']}/nack", json={"lease_token": m["lease_token"]})
        assert r.json()["state"] == "dead"
    assert len(api.get("/queues/poison/dlq").json()["messages"]) == 3
    assert len(api.post("/queues/poison/dlq/redrive", json={}).json()["redriven"]) == 3


def deep_list(n: int):
    value: list = []
    for _ in range(n - 1):
        value = [value]
    return value


def test_far_deliver_at_is_refused_over_grpc(stub):
    stub.CreateQueue(pb.CreateQueueRequest(name="far"))
    for at in (INT64_MAX, 253_402_300_800_000, -(2**63)):
        with pytest.raises(grpc.RpcError) as err:
            stub.Enqueue(pb.EnqueueRequest(queue="far", message=pb.NewMessage(payload=b"x", deliver_at=at)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The latest instant that can be written as ISO 8601 is accepted and shown.
    mid = stub.Enqueue(
        pb.EnqueueRequest(queue="far", message=pb.NewMessage(payload=b"x", deliver_at=253_402_300_799_999))
    ).id
    assert stub.GetMessage(pb.GetMessageRequest(queue="far", id=mid)).available_at == 253_402_300_799_999


def test_settings_out_of_bounds_are_refused_and_list_queues_keeps_working(api, stub):
    for settings in (
        {"max_length": 2**63},
        {"visibility_timeout": 1e305},
        {"retention": 1e305},
        {"dedup_window": 10**400},
        {"retry_max": -1},
        {"default_priority": True},
        {"weights": {"1": 2**63}},
        {"weights": {"x": 1}},
        {"fair_groups": 1},
        {"max_deliveries": "5"},
        {"dead_letter_retention": 400 * 86400},
    ):
        r = api.post("/queues", json={"name": "bounds", **settings})
        assert r.status_code == 422, (settings, r.text)
        assert api.get("/queues/bounds").status_code == 404
    r = post_raw(api, "/queues", '{"name": "bounds", "retention": Infinity}')
    assert r.status_code == 422
    make_queue(api, "bounds", max_length=INT64_MAX)
    assert api.patch("/queues/bounds", json={"max_length": 2**63}).status_code == 422
    assert api.patch("/queues/bounds", json={"retry_base": 1e305}).status_code == 422
    for settings in (
        pb.QueueSettings(visibility_timeout=1e305),
        pb.QueueSettings(retention=float("inf")),
        pb.QueueSettings(dedup_window=float("nan")),
        pb.QueueSettings(max_payload_bytes=2**62),
    ):
        with pytest.raises(grpc.RpcError) as err:
            stub.UpdateQueue(pb.UpdateQueueRequest(name="bounds", settings=settings))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    names = [q.name for q in stub.ListQueues(pb.ListQueuesRequest()).queues]
    assert "bounds" in names


def test_deep_json_over_grpc_is_invalid_argument(stub):
    stub.CreateQueue(pb.CreateQueueRequest(name="deepgrpc"))
    for n in (MAX_JSON_DEPTH + 1, 100_000):
        with pytest.raises(grpc.RpcError) as err:
            stub.Enqueue(
                pb.EnqueueRequest(
                    queue="deepgrpc", message=pb.NewMessage(payload=deep(n).encode(), content_type="application/json")
                )
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stub.Enqueue(pb.EnqueueRequest(queue="deepgrpc", message=pb.NewMessage(payload=b"1")))
    [m] = stub.Dequeue(pb.DequeueRequest(queue="deepgrpc", max=1)).messages
    for n in (MAX_JSON_DEPTH + 1, 100_000):
        with pytest.raises(grpc.RpcError) as err:
            stub.Ack(pb.AckRequest(queue="deepgrpc", id=m.id, lease_token=m.lease_token, result_json=deep(n)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stub.Ack(pb.AckRequest(queue="deepgrpc", id=m.id, lease_token=m.lease_token, result_json=deep(MAX_JSON_DEPTH)))


def test_body_errors_are_422_with_a_json_detail(api):
    make_queue(api, "bodies")
    for body in (
        b'{"payload": "\xed\xa0\x80"}',
        b'{"payload": "\xff"}',
        '{"payload": 1}'.encode("utf-16"),
        b'{"payload": 1',
        deep(100_000).encode(),
    ):
        r = post_raw(api, "/queues/bodies/messages", body)
        assert r.status_code == 422, (body[:40], r.status_code, r.text)
        assert isinstance(r.json()["detail"], str)
    assert counts(api, "bodies")["ready"] == 0


def test_queue_full_answer_says_when_to_retry(api):
    make_queue(api, "full", max_length=1)
    assert api.post("/queues/full/messages", json={"payload": 1}).status_code == 201
    r = api.post("/queues/full/messages", json={"payload": 2})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"


def test_cluster_routes_document_their_real_422_body(api, server):
    spec = httpx.get(server.url + "/openapi.json").json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            ref = (
                op.get("responses", {}).get("422", {}).get("content", {}).get("application/json", {}).get("schema", {})
            )
            if ref:
                assert ref.get("$ref", "").endswith("/ErrorBody"), (method, path, ref)
    r = api.post("/cluster/members", json={"address": "no port"})
    assert r.status_code == 422 and isinstance(r.json()["detail"], str)


# ---- limits on size: counted while reading, checked before proposing ------------------------------


def test_a_refused_payload_writes_nothing_to_the_log(api, stub):
    make_queue(api, "small", max_payload_bytes=1000)
    index, before = commit_index(api), counts(api, "small")
    r = api.post("/queues/small/messages", json={"payload": "x" * 2000})
    assert r.status_code == 413
    r = api.post("/queues/small/messages/batch", json={"messages": [{"payload": 1}, {"payload": "x" * 2000}]})
    assert r.status_code == 413
    with pytest.raises(grpc.RpcError) as err:
        stub.Enqueue(pb.EnqueueRequest(queue="small", message=pb.NewMessage(payload=b"x" * 2000)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(err.value.trailing_metadata())["rankq-status"] == "413"
    assert commit_index(api) == index
    assert counts(api, "small") == before


def test_headers_count_toward_max_payload_bytes(api, stub):
    make_queue(api, "withheaders", max_payload_bytes=1000)
    payload = "x" * 598  # 600 bytes as JSON text
    assert api.post("/queues/withheaders/messages", json={"payload": payload}).status_code == 201
    r = api.post("/queues/withheaders/messages", json={"payload": payload, "headers": {"h": "y" * 500}})
    assert r.status_code == 413, r.text
    assert "headers" in r.json()["detail"]
    assert (
        api.post("/queues/withheaders/messages", json={"payload": payload, "headers": {"h": "y" * 399}}).status_code
        == 201
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.Enqueue(
            pb.EnqueueRequest(queue="withheaders", message=pb.NewMessage(payload=b"x" * 600, headers={"h": "y" * 500}))
        )
    assert dict(err.value.trailing_metadata())["rankq-status"] == "413"


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_chunked_body_over_the_limit_is_refused_while_reading(server, api):
    make_queue(api, "chunked")
    index = commit_index(api)
    peak_before = peak_rss_kib(server.proc.pid)
    chunk = b'{"payload": "' + b"x" * (1024 * 1024 - 13)
    total = 3 * MAX_PAYLOAD_BYTES  # three times the limit if the server kept reading
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as sock:
        sock.sendall(
            b"POST /api/v1/queues/chunked/messages HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
        try:
            while sent < total:
                sock.sendall(frame)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: what the test wants
        sock.settimeout(30)
        try:
            while b"\r\n\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except ConnectionResetError:
            pass
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 2 * MAX_PAYLOAD_BYTES, "the server read far past the limit"
    # The body was never held in full twice over: the peak grew by at most twice the limit.
    assert peak_rss_kib(server.proc.pid) - peak_before < 2 * MAX_PAYLOAD_BYTES // 1024 + 64 * 1024
    assert commit_index(api) == index
    assert httpx.get(server.url + "/healthz").status_code == 200


# ---- one client's bad request never fails another's -----------------------------------------------


async def http_post(reader, writer, path: str, body: bytes) -> int:
    """One request on a kept-alive connection (plain asyncio: a thousand of them stay cheap)."""
    writer.write(
        b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % (path.encode(), len(body))
        + body
    )
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


def test_a_malformed_ack_fails_alone_among_a_thousand_enqueues(server, api):
    make_queue(api, "isolation", visibility_timeout=3600)
    assert api.post("/queues/isolation/messages", json={"payload": "lease me"}).status_code == 201
    [m] = api.post("/queues/isolation/dequeue", json={"max": 1}).json()["messages"]
    bad = ('{"lease_token": "%s", "result": %s}' % (m["lease_token"], deep(500))).encode()
    connections, per_connection = 50, 20

    done = {"n": 0}
    flowing = asyncio.Event()

    async def client(c: int) -> list[int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
        out = []
        try:
            for i in range(per_connection):
                try:
                    out.append(
                        await http_post(
                            reader, writer, "/api/v1/queues/isolation/messages", b'{"payload": %d}' % (c * 100 + i)
                        )
                    )
                except (ConnectionError, asyncio.IncompleteReadError):  # counted as failed; go on
                    out.append(0)
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
                done["n"] += 1
                if done["n"] == connections * per_connection // 4:
                    flowing.set()
        finally:
            writer.close()
        return out

    async def malformed() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
        try:
            return await http_post(reader, writer, f"/api/v1/queues/isolation/messages/{m['id']}/ack", bad)
        finally:
            writer.close()

    async def run() -> tuple[list[list[int]], int]:
        clients = [asyncio.ensure_future(client(c)) for c in range(connections)]
        await flowing.wait()  # in the middle of the flow, so that it lands in a batch with others
        bad_status = await malformed()
        return await asyncio.gather(*clients), bad_status

    goods, bad_status = asyncio.run(run())
    statuses = [s for per in goods for s in per]
    assert statuses.count(201) == connections * per_connection, Counter(statuses)
    assert bad_status == 422
    assert counts(api, "isolation")["ready"] == connections * per_connection
    # The lease survived the refused ack.
    r = api.post(
        f"/queues/isolation/messages/{m['id']}/ack", json={"lease_token": m["lease_token"], "result": {"ok": 1}}
    )
    assert r.status_code == 200
