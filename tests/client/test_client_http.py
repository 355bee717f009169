"""The Python client (sync and async) over HTTP against a real server process."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from serverproc import ServerProcess, wait_for

import rankq
from rankq import (
    AsyncClient,
    Client,
    ConflictError,
    InvalidRequestError,
    NewMessage,
    NotFoundError,
    PayloadTooLargeError,
    QueueFullError,
    TransportError,
    UnavailableError,
)
from rankq.client.http_transport import HttpTransport


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens once the socket is closed


def commit_index(server) -> int:
    text = httpx.get(server.url + "/metrics", timeout=5).text
    return int(float(re.search(r"^rankq_raft_commit_index (\S+)$", text, re.M).group(1)))


class Counting:
    """Wraps a transport, counts calls per method and can fail the first calls with 503."""

    def __init__(self, inner, unavailable: dict[str, int] | None = None) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.unavailable = dict(unavailable or {})

    def __getattr__(self, name):
        target = getattr(self.inner, name)
        if name == "close":
            return target

        async def call(*args, **kwargs):
            self.calls[name] += 1
            if self.unavailable.get(name, 0) > 0:
                self.unavailable[name] -= 1
                raise UnavailableError("no leader can commit writes right now", status=503)
            return await target(*args, **kwargs)

        return call


# ---- round trips -----------------------------------------------------------------------------------


def test_create_queue_exist_ok_returns_the_queue_unchanged(client, qname):
    from rankq.client import ConflictError

    client.create_queue(qname, visibility_timeout=45)
    with pytest.raises(ConflictError):
        client.create_queue(qname)
    again = client.create_queue(qname, exist_ok=True, visibility_timeout=10)
    assert again.name == qname and again.settings["visibility_timeout"] == 45


def test_sync_round_trip_enqueue_dequeue_ack_with_result(client, qname):
    info = client.create_queue(qname, policy="weighted", weights={1: 50, 2: 30, 3: 20}, visibility_timeout=30)
    assert info.name == qname and info.settings["policy"] == "weighted"
    assert info.settings["weights"] == {1: 50, 2: 30, 3: 20}

    sent = client.enqueue(
        qname, {"to": "a@example.com", "n": [1, 2]}, priority=1, group="tenant-a", headers={"trace": "t1"}
    )
    assert sent.id > 0 and not sent.duplicate and sent.seq == sent.id
    assert client.get_queue(qname).counts.ready == 1

    [msg] = client.dequeue(qname, max=10)
    assert (msg.queue, msg.id, msg.payload) == (qname, sent.id, {"to": "a@example.com", "n": [1, 2]})
    assert (msg.priority, msg.group, msg.deliveries, msg.headers) == (1, "tenant-a", 1, {"trace": "t1"})
    assert msg.lease_token and msg.lease_expires_at > msg.enqueued_at
    assert msg.lease_expires_at.tzinfo is not None
    assert client.get_message(qname, msg.id).state == "leased"

    client.ack(msg, result={"sent": True})
    status = client.get_message(qname, msg.id)
    assert (status.state, status.result) == ("acked", {"sent": True})
    assert status.acked_at is not None
    counts = client.get_queue(qname).counts
    assert (counts.ready, counts.leased, counts.depth) == (0, 0, 0)


def test_async_round_trip(server, qname):
    async def scenario():
        async with AsyncClient(server.url) as rq:
            await rq.create_queue(qname)
            ids = [(await rq.enqueue(qname, f"job-{i}", priority=p)).id for i, p in enumerate([3, 1, 2])]
            got = await rq.dequeue(qname, max=3)
            assert [m.payload for m in got] == ["job-1", "job-2", "job-0"]  # strict: lowest number first
            await rq.ack(got[0], result="done")
            await rq.ack(qname, got[1].id, got[1].lease_token)  # the explicit form
            nacked = await rq.nack(got[2], delay=0, error="try again")
            assert nacked.state == "ready"
            with pytest.raises(ConflictError):
                await rq.ack(got[2])
            [again] = await rq.dequeue(qname)
            assert (again.id, again.deliveries) == (ids[0], 2)
            await rq.ack(again)
            assert (await rq.get_message(qname, ids[1])).result == "done"
            return await rq.get_queue(qname)

    info = asyncio.run(scenario())
    assert info.totals["acked"] == 3 and info.counts.depth == 0


def test_nack_redelivers_with_incremented_deliveries_and_keeps_error(client, qname):
    client.create_queue(qname)
    client.enqueue(qname, {"k": 1})
    [first] = client.dequeue(qname)
    res = client.nack(first, delay=0, error="worker crashed")
    assert (res.id, res.state) == (first.id, "ready")
    [second] = client.dequeue(qname)
    assert (second.id, second.deliveries) == (first.id, 2)
    assert second.lease_token != first.lease_token
    assert client.get_message(qname, first.id).last_error == "worker crashed"

    later = client.nack(second, delay=60)
    assert later.state == "delayed"
    assert later.available_at > datetime.now(UTC) + timedelta(seconds=30)
    assert client.dequeue(qname) == []


def test_extend_pushes_the_lease_out(client, qname):
    client.create_queue(qname)
    client.enqueue(qname, "x")
    [msg] = client.dequeue(qname, visibility_timeout=5)
    assert msg.lease_expires_at < datetime.now(UTC) + timedelta(seconds=6)
    new_expiry = client.extend(msg, visibility_timeout=120)
    assert new_expiry > msg.lease_expires_at + timedelta(seconds=100)
    assert client.get_message(qname, msg.id).lease_expires_at == new_expiry
    client.ack(msg)  # the same token stays valid after an extend


def test_stale_or_wrong_lease_token_is_a_conflict(client, qname):
    client.create_queue(qname)
    client.enqueue(qname, "x")
    [msg] = client.dequeue(qname)
    with pytest.raises(ConflictError) as wrong:
        client.ack(qname, msg.id, "not-the-token")
    assert wrong.value.status == 409 and str(wrong.value).startswith("409: ")
    client.ack(msg)
    for attempt in (lambda: client.ack(msg), lambda: client.nack(msg), lambda: client.extend(msg)):
        with pytest.raises(ConflictError):
            attempt()


def test_unknown_queue_is_not_found(client):
    for call in (
        lambda: client.get_queue("no-such-queue"),
        lambda: client.enqueue("no-such-queue", 1),
        lambda: client.dequeue("no-such-queue"),
        lambda: client.dead_letters("no-such-queue"),
    ):
        with pytest.raises(NotFoundError) as err:
            call()
        assert err.value.status == 404
        assert "no-such-queue" in err.value.detail


def test_full_queue_refuses_enqueue(client, qname):
    client.create_queue(qname, max_length=2)
    client.enqueue(qname, 1)
    client.enqueue(qname, 2)
    with pytest.raises(QueueFullError) as err:
        client.enqueue(qname, 3)
    assert err.value.status == 429
    assert client.get_queue(qname).counts.ready == 2
    client.update_queue(qname, max_length=None)  # clearing the limit lets it grow again
    client.enqueue(qname, 3)
    assert client.get_queue(qname).settings["max_length"] is None


def test_payload_too_large(client, qname):
    client.create_queue(qname, max_payload_bytes=100)
    with pytest.raises(PayloadTooLargeError) as err:
        client.enqueue(qname, "x" * 500)
    assert err.value.status == 413
    client.enqueue(qname, "small")


def test_invalid_requests(client, qname):
    with pytest.raises(InvalidRequestError) as err:
        client.create_queue("not a valid name!")
    assert err.value.status == 422 and "name" in err.value.detail
    client.create_queue(qname)
    with pytest.raises(InvalidRequestError):
        client.dequeue(qname, max=0)
    with pytest.raises(InvalidRequestError):
        client.create_queue(qname + "-w", policy="sideways")


def test_bytes_payload_is_refused_client_side_over_http(client, qname):
    client.create_queue(qname)
    with pytest.raises(InvalidRequestError) as err:
        client.enqueue(qname, b"\x00\x01")
    assert "gRPC" in err.value.detail or "grpc://" in err.value.detail
    assert client.get_queue(qname).totals["enqueued"] == 0


def test_create_existing_queue_conflicts_and_delete_removes_it(client, qname):
    client.create_queue(qname)
    with pytest.raises(ConflictError):
        client.create_queue(qname)
    assert qname in [q.name for q in client.list_queues()]
    client.delete_queue(qname)
    with pytest.raises(NotFoundError):
        client.get_queue(qname)


def test_set_priority_and_cancel(client, qname):
    client.create_queue(qname)
    low = client.enqueue(qname, "low", priority=5)
    client.enqueue(qname, "mid", priority=3)
    status = client.set_priority(qname, low.id, 1)
    assert (status.state, status.priority) == ("ready", 1)
    [first] = client.dequeue(qname)
    assert first.payload == "low"
    with pytest.raises(ConflictError):
        client.cancel(qname, first.id)  # leased
    [mid] = client.dequeue(qname, max=5)
    client.nack(mid, delay=0)
    client.cancel(qname, mid.id)
    assert client.dequeue(qname) == []


# ---- batches and dedup ------------------------------------------------------------------------------


def test_batch_enqueue_accepts_messages_dicts_and_payloads_in_order(client, qname):
    client.create_queue(qname)
    results = client.enqueue_batch(
        qname,
        [
            NewMessage(payload="a", priority=2),
            {"payload": {"b": 1}, "priority": 1, "group": "g"},
            {"not": "a spec"},  # a plain dict is a payload
            7,
        ],
    )
    assert len(results) == 4 and [r.id for r in results] == sorted(r.id for r in results)
    got = client.dequeue(qname, max=10)
    assert [(m.payload, m.priority) for m in got] == [({"b": 1}, 1), ("a", 2), ({"not": "a spec"}, 3), (7, 3)]
    assert got[0].group == "g"

    client.ack(got[0])  # now got[0]'s token is stale
    outcomes = client.ack_batch([got[0], (got[1], {"r": 1}), got[2], got[3]])
    assert [o.id for o in outcomes] == [m.id for m in got]
    assert [o.ok for o in outcomes] == [False, True, True, True]
    assert outcomes[0].status == 409 and outcomes[0].detail
    assert client.get_message(qname, got[1].id).result == {"r": 1}
    assert client.enqueue_batch(qname, []) == []


def test_batch_is_all_or_nothing(client, qname):
    client.create_queue(qname, max_length=3)
    with pytest.raises(QueueFullError):
        client.enqueue_batch(qname, [1, 2, 3, 4])
    assert client.get_queue(qname).counts.ready == 0


def test_dedup_key_returns_the_first_id(client, qname):
    client.create_queue(qname)
    first = client.enqueue(qname, "once", dedup_key="order-42")
    again = client.enqueue(qname, "once", dedup_key="order-42")
    assert (again.id, again.duplicate, first.duplicate) == (first.id, True, False)
    assert client.get_queue(qname).counts.ready == 1
    assert client.get_message(qname, first.id).dedup_key == "order-42"


# ---- dead letters -----------------------------------------------------------------------------------


def test_dead_letters_list_page_and_redrive(client, qname):
    client.create_queue(qname, max_deliveries=1)
    ids = [r.id for r in client.enqueue_batch(qname, ["d1", "d2", "d3"])]
    for msg in client.dequeue(qname, max=3):
        assert client.nack(msg, error=f"bad {msg.payload}").state == "dead"
    assert client.get_queue(qname).counts.dead == 3

    page = client.dead_letters(qname, limit=2)
    assert [m.id for m in page] == ids[:2]
    assert page[0].state == "dead" and page[0].last_error == "bad d1" and page[0].payload == "d1"
    assert [m.id for m in client.dead_letters(qname, after=page[-1].id, limit=2)] == ids[2:]
    assert [m.id for m in client.iter_dead_letters(qname, page_size=2)] == ids

    res = client.redrive(qname, ids=[ids[0], 999_999_999])
    assert (res.redriven, res.not_found) == ([ids[0]], [999_999_999])
    assert client.redrive(qname).redriven == ids[1:]
    counts = client.get_queue(qname).counts
    assert (counts.dead, counts.ready) == (0, 3)
    assert {m.deliveries for m in client.dequeue(qname, max=3)} == {1}  # a fresh delivery count


def test_async_iter_dead_letters(server, qname):
    async def scenario():
        async with AsyncClient(server.url) as rq:
            await rq.create_queue(qname, max_deliveries=1)
            await rq.enqueue_batch(qname, list(range(5)))
            for m in await rq.dequeue(qname, max=5):
                await rq.nack(m)
            return [m.payload async for m in rq.iter_dead_letters(qname, page_size=2)]

    assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]


# ---- long polling -----------------------------------------------------------------------------------


def test_long_poll_wakes_when_a_message_is_enqueued_from_another_thread(server, client, qname):
    client.create_queue(qname)
    before = commit_index(server)
    got: dict = {}

    def poll():
        start = time.monotonic()
        got["messages"] = client.dequeue(qname, wait=15)
        got["elapsed"] = time.monotonic() - start

    poller = threading.Thread(target=poll)
    poller.start()
    # The poll waits once the server has logged the request and committed its empty first dequeue.
    wait_for(
        lambda: f"/api/v1/queues/{qname}/dequeue" in server.logs() and commit_index(server) > before,
        10,
        "the long poll to start waiting",
    )
    assert poller.is_alive()
    sent = client.enqueue(qname, "wake up")  # the same Client, from this thread, is not blocked
    poller.join(15)
    assert not poller.is_alive()
    assert [(m.id, m.payload) for m in got["messages"]] == [(sent.id, "wake up")]
    assert got["elapsed"] < 10


def test_long_poll_outlasts_the_request_timeout(server, qname):
    with Client(server.url) as setup:
        setup.create_queue(qname)  # with the default timeout: a loaded machine may take over 0.5 s
    with Client(server.url, timeout=0.5) as rq:
        start = time.monotonic()
        assert rq.dequeue(qname, wait=2) == []
        assert time.monotonic() - start >= 1.5


# ---- retries ----------------------------------------------------------------------------------------


def test_plain_enqueue_is_attempted_once_on_transport_error():
    counting = Counting(HttpTransport(closed_port_url(), timeout=2))
    with Client(transport=counting, retries=3, retry_backoff=0.01) as rq:
        with pytest.raises(TransportError):
            rq.enqueue("q", {"x": 1})
        assert counting.calls["enqueue"] == 1
        with pytest.raises(TransportError):
            rq.enqueue_batch("q", [NewMessage(1, dedup_key="a"), NewMessage(2)])
        assert counting.calls["enqueue"] == 2  # one message without a key: not retried either
        with pytest.raises(TransportError):
            rq.dequeue("q")
        assert counting.calls["dequeue"] == 1


def test_idempotent_calls_are_retried_on_transport_error():
    counting = Counting(HttpTransport(closed_port_url(), timeout=2))
    with Client(transport=counting, retries=3, retry_backoff=0.01) as rq:
        with pytest.raises(TransportError) as err:
            rq.enqueue("q", {"x": 1}, dedup_key="k1")
        assert "cannot reach" in str(err.value)
        with pytest.raises(TransportError):
            rq.get_queue("q")
        with pytest.raises(TransportError):
            rq.ack("q", 1, "token")
        with pytest.raises(TransportError):
            rq.nack("q", 1, "token")
    assert (counting.calls["enqueue"], counting.calls["get_queue"], counting.calls["ack"], counting.calls["nack"]) == (
        4,
        4,
        4,
        4,
    )


def test_unavailable_is_retried_for_reads_but_not_for_plain_enqueue(server, qname):
    counting = Counting(HttpTransport(server.url), unavailable={"get_queue": 2, "enqueue": 1})
    with Client(transport=counting, retries=3, retry_backoff=0.01) as rq:
        rq.create_queue(qname)
        assert rq.get_queue(qname).name == qname  # two 503s, then success
        assert counting.calls["get_queue"] == 3
        with pytest.raises(UnavailableError):
            rq.enqueue(qname, "once")
        assert counting.calls["enqueue"] == 1
        assert rq.get_queue(qname).counts.ready == 0


def test_retries_zero_means_one_attempt():
    counting = Counting(HttpTransport(closed_port_url(), timeout=2))
    with Client(transport=counting, retries=0) as rq:
        with pytest.raises(TransportError):
            rq.list_queues()
    assert counting.calls["list_queues"] == 1


# ---- the client object --------------------------------------------------------------------------------


def test_close_stops_the_background_thread(server):
    rq = Client(server.url)
    thread = rq._loop.thread
    rq.list_queues()
    rq.close()
    rq.close()  # twice is fine
    assert not thread.is_alive()
    with pytest.raises(RuntimeError):
        rq.list_queues()


def test_url_scheme_picks_the_transport():
    with pytest.raises(ValueError, match="unsupported URL"):
        Client("ftp://127.0.0.1:21")
    with pytest.raises(ValueError, match="host and port"):
        AsyncClient("grpc://127.0.0.1")


def test_public_names_and_light_import():
    assert rankq.Client is Client and rankq.AsyncClient is AsyncClient
    assert issubclass(rankq.NotFoundError, rankq.RankQError)
    code = "import sys, rankq, rankq.engine; assert 'httpx' not in sys.modules and 'rankq.client' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_grpc_url_uses_the_grpc_transport():
    grpc_transport = pytest.importorskip("rankq.client.grpc_transport")

    async def build():
        rq = AsyncClient("grpc://127.0.0.1:19999", timeout=3)
        try:
            return type(rq._transport), rq._transport.target
        finally:
            await rq.close()

    assert asyncio.run(build()) == (grpc_transport.GrpcTransport, "127.0.0.1:19999")


@pytest.fixture(scope="module")
def grpc_server(tmp_path_factory):
    pytest.importorskip("rankq.server.grpc_api")
    pytest.importorskip("rankq.client.grpc_transport")
    srv = ServerProcess(str(tmp_path_factory.mktemp("grpc-server")), grpc=True).start(timeout=30)
    yield srv
    srv.stop()


def test_binary_payload_from_grpc_arrives_as_bytes_over_http(grpc_server, qname):
    with Client(f"grpc://127.0.0.1:{grpc_server.grpc_port}") as over_grpc, Client(grpc_server.url) as over_http:
        over_grpc.create_queue(qname)
        sent = over_grpc.enqueue(qname, b"\x00\xffraw", priority=1)
        over_grpc.enqueue(qname, {"json": True})
        got = over_http.dequeue(qname, max=2)
        assert [(m.id, m.payload) for m in got][0] == (sent.id, b"\x00\xffraw")
        assert got[1].payload == {"json": True}
        over_http.ack(got[0])
        assert over_grpc.get_message(qname, sent.id).state == "acked"


def test_top_level_exports_match_the_client_package():
    import rankq
    import rankq.client

    # rankq lists the names without importing the client (lazy); the two lists must not drift.
    assert set(rankq._CLIENT_NAMES) == set(rankq.client.__all__)
