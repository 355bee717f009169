"""Task semantics through the client, over both transports (sync) and the async client: dependencies
in every form `depends_on` takes, TTL, the waiting count, paced redrive and its errors."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from serverproc import ServerProcess, wait_for

from rankq import AsyncClient, BatchRef, Client, Dependency, NewMessage
from rankq.client.errors import ConflictError, InvalidRequestError, NotFoundError, QueueFullError

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def grpc_server(tmp_path_factory):
    srv = ServerProcess(str(tmp_path_factory.mktemp("client-tasks")), grpc=True).start(timeout=30)
    yield srv
    srv.stop()


@pytest.fixture(scope="module", params=["http", "grpc"])
def rq(request, grpc_server):
    url = grpc_server.url if request.param == "http" else f"grpc://127.0.0.1:{grpc_server.grpc_port}"
    with Client(url, timeout=10) as c:
        c.kind = request.param
        yield c


def queue(rq, base: str, **settings) -> str:
    name = f"{base}-{rq.kind}"
    rq.create_queue(name, **settings)
    return name


def test_depends_on_in_every_form(rq):
    up = queue(rq, "c-deps-up")
    q = queue(rq, "c-deps")
    a = rq.enqueue(q, "a").id
    other = rq.enqueue(up, "other").id
    b = rq.enqueue(q, "b", depends_on=[a, (up, other)]).id
    c, d = (
        r.id
        for r in rq.enqueue_batch(
            q,
            [
                NewMessage("c", depends_on=[Dependency(b)]),
                NewMessage("d", depends_on=[BatchRef(0), Dependency(other, up)]),
            ],
        )
    )
    st = rq.get_message(q, d)
    assert st.state == "waiting"
    assert st.depends_on == [Dependency(c, q), Dependency(other, up)]
    assert rq.get_message(q, b).depends_on == [Dependency(a, q), Dependency(other, up)]
    info = rq.get_queue(q)
    assert info.counts.waiting == 3 and info.counts.ready == 1 and info.counts.depth == 4
    with pytest.raises(InvalidRequestError, match="batch"):
        rq.enqueue(q, "x", depends_on=[BatchRef(0)])
    with pytest.raises(NotFoundError):
        rq.enqueue(q, "x", depends_on=[(up, 10**12)])
    with pytest.raises(TypeError):
        rq.enqueue(q, "x", depends_on=["nope"])
    [m] = rq.dequeue(q, max=10)
    assert m.id == a
    rq.ack(m)
    assert rq.dequeue(q, max=10) == []  # b also waits for the other queue's message


def test_ttl_and_expires_at(rq):
    q = queue(rq, "c-ttl")
    at = datetime.now(UTC) + timedelta(minutes=10)
    mid = rq.enqueue(q, "x", expires_at=at).id
    assert abs(rq.get_message(q, mid).expires_at - at) < timedelta(milliseconds=2)
    short = rq.enqueue(q, "y", ttl=0.2).id
    wait_for(lambda: rq.get_message(q, short).state == "dead", 10, "the message to expire")
    assert rq.get_message(q, short).dead_reason == "expired"
    with pytest.raises(InvalidRequestError):
        rq.enqueue(q, "z", ttl=0)


def test_paced_redrive(rq):
    q = queue(rq, "c-redrive")
    with pytest.raises(NotFoundError):
        rq.redrive_status(q)
    rq.enqueue_batch(q, list(range(30)))
    for m in rq.dequeue(q, max=30):
        rq.nack(m, dead=True)
    res = rq.redrive(q, rate=10)
    assert res.redriven == [] and res.job is not None and res.job.total == 30 and res.job.state == "running"
    assert isinstance(res.job.started_at, datetime)
    with pytest.raises(ConflictError):
        rq.redrive(q, rate=10)
    wait_for(lambda: rq.redrive_status(q).moved >= 2, 10, "messages to move")
    stopped = rq.stop_redrive(q)
    assert stopped.state == "stopped" and stopped.moved + stopped.remaining == 30
    assert rq.redrive_status(q) == stopped


def test_async_client(grpc_server):
    async def main() -> None:
        async with AsyncClient(grpc_server.url) as rq:
            await rq.create_queue("c-async")
            first = await rq.enqueue("c-async", 1)
            second = await rq.enqueue("c-async", 2, depends_on=[first.id], ttl=600)
            st = await rq.get_message("c-async", second.id)
            assert st.state == "waiting" and st.expires_at is not None
            assert (await rq.get_queue("c-async")).counts.waiting == 1
            [m] = await rq.dequeue("c-async", max=5)
            await rq.nack(m, dead=True)
            assert (await rq.get_message("c-async", second.id)).dead_reason == "dependency_failed"
            job = (await rq.redrive("c-async", rate=100)).job
            assert job is not None and job.total == 2
            done = None
            for _ in range(200):
                done = await rq.redrive_status("c-async")
                if done.state == "done":
                    break
                await asyncio.sleep(0.05)  # polled: the job moves messages as the group's time passes
            assert done is not None and done.state == "done" and done.moved == 2

    asyncio.run(main())


def test_queue_full_error_carries_retry_after(rq):
    q = queue(rq, "c-full", max_length=1)
    rq.enqueue(q, 1)
    with pytest.raises(QueueFullError) as info:
        rq.enqueue(q, 2)
    assert info.value.status == 429 and info.value.retry_after == 1.0
