"""The server operations the worker needs, over HTTP and gRPC against a real server: release,
reject (nack dead), backlog, and a long poll whose client hangs up leaves nothing leased."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from rankq import Client, ConflictError


@pytest.fixture(params=["http", "grpc"])
def rq(request, grpc_server):
    url = grpc_server.url if request.param == "http" else f"grpc://127.0.0.1:{grpc_server.grpc_port}"
    with Client(url) as client:
        yield client


def test_release_gives_back_without_counting_a_delivery(rq, request):
    q = f"rel-{request.node.callspec.id}"
    rq.create_queue(q, max_deliveries=1)
    rq.enqueue(q, {"n": 1})
    [m] = rq.dequeue(q)
    assert m.deliveries == 1
    rq.release(m)
    status = rq.get_message(q, m.id)
    assert status.state == "ready" and status.deliveries == 0
    with pytest.raises(ConflictError):
        rq.release(m)  # the lease is gone: nothing changes
    [again] = rq.dequeue(q)  # max_deliveries=1, and it is still delivered
    assert again.id == m.id and again.deliveries == 1
    assert rq.get_queue(q).totals["released"] == 1


def test_reject_dead_letters_at_once(rq, request):
    q = f"rej-{request.node.callspec.id}"
    rq.create_queue(q, max_deliveries=10)
    rq.enqueue(q, "bad")
    [m] = rq.dequeue(q)
    res = rq.nack(m, error="unparseable", dead=True)
    assert res.state == "dead"
    [dead] = rq.dead_letters(q)
    assert dead.id == m.id and dead.last_error == "unparseable" and dead.deliveries == 1


def test_backlog_counts_ready_leased_and_due_delayed(rq, request):
    q = f"bl-{request.node.callspec.id}"
    rq.create_queue(q)
    rq.enqueue_batch(q, [1, 2, 3])
    rq.enqueue(q, 4, delay=3600)
    rq.dequeue(q)
    counts = rq.get_queue(q).counts
    assert (counts.ready, counts.leased, counts.delayed, counts.backlog) == (2, 1, 1, 3)


def test_release_of_unknown_message_is_404_and_bad_body_422(grpc_server):
    base = grpc_server.url + "/api/v1/queues"
    httpx.post(base, json={"name": "rel-bad"})
    r = httpx.post(f"{base}/rel-bad/messages/12345/release", json={"lease_token": "x"})
    assert r.status_code == 404 and "detail" in r.json()
    r = httpx.post(f"{base}/rel-bad/messages/12345/release", json={})
    assert r.status_code == 422
    r = httpx.post(f"{base}/rel-bad/messages/12345/nack", json={"lease_token": "x", "dead": "yes please"})
    assert r.status_code == 422


CLIENT_HANGS_UP = """
import asyncio, sys, httpx
async def main():
    async with httpx.AsyncClient() as c:
        try:
            await asyncio.wait_for(c.post(sys.argv[1], json={"max": 5, "wait": 15}), 0.5)
        except asyncio.TimeoutError:
            pass
asyncio.run(main())
"""


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_long_poll_whose_client_left_leases_nothing(grpc_server, transport):
    """A consumer that stops waiting (closed connection, cancelled call) while its long poll is
    pending must not take the messages enqueued afterwards."""
    q = f"gone-{transport}"
    with Client(grpc_server.url) as rq:
        rq.create_queue(q)
        if transport == "http":
            subprocess.run(
                [sys.executable, "-c", CLIENT_HANGS_UP, f"{grpc_server.url}/api/v1/queues/{q}/dequeue"],
                check=True,
                timeout=30,
            )
        else:
            import grpc

            from rankq.server.proto import rankq_pb2 as pb
            from rankq.server.proto import rankq_pb2_grpc as pb_grpc

            with grpc.insecure_channel(f"127.0.0.1:{grpc_server.grpc_port}") as channel:
                call = pb_grpc.RankQStub(channel).Dequeue.future(pb.DequeueRequest(queue=q, max=5, wait=15))
                time.sleep(0.5)  # let the poll reach the server and wait there; then hang up
                call.cancel()
        ids = [r.id for r in rq.enqueue_batch(q, ["a", "b", "c"])]
        # Had the abandoned poll lived on, it would have leased these within milliseconds.
        time.sleep(0.3)
        states = {rq.get_message(q, i).state for i in ids}
        assert states == {"ready"}
        assert rq.get_queue(q).counts.leased == 0
        got = rq.dequeue(q, max=5)
        assert sorted(m.id for m in got) == ids and all(m.deliveries == 1 for m in got)


def test_cli_release_and_nack_dead(grpc_server):
    from click.testing import CliRunner

    from rankq.cli import main

    runner = CliRunner(env={"RANKQ_URL": None})

    def run(*args: str):
        res = runner.invoke(main, ["--url", grpc_server.url, *args], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return res.output

    with Client(grpc_server.url) as rq:
        rq.create_queue("cli-ops")
        rq.enqueue_batch("cli-ops", ["a", "b"])
        first, second = rq.dequeue("cli-ops", max=2)
        assert "released message" in run("release", "cli-ops", str(first.id), first.lease_token)
        assert rq.get_message("cli-ops", first.id).state == "ready"
        assert "is dead" in run("nack", "cli-ops", str(second.id), second.lease_token, "--dead", "--error", "bad")
        assert rq.get_message("cli-ops", second.id).last_error == "bad"
        res = runner.invoke(main, ["--url", grpc_server.url, "release", "cli-ops", str(first.id), first.lease_token])
        assert res.exit_code == 1 and "409" in res.output
