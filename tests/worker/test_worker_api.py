"""The Python API in-process: `Worker` with sync and async handlers, Retry, Reject, a handler
timeout, and `stop()`; against a real server."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from serverproc import free_port, wait_for

from rankq import Client, Reject, Retry, Worker


def run_in_thread(worker: Worker) -> threading.Thread:
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    wait_for(lambda: worker.ready, 20, "the worker to start")
    return t


@pytest.mark.parametrize("kind,transport", [("sync", "http"), ("async", "http"), ("sync", "grpc")])
def test_outcomes(grpc_server, kind, transport):
    queue = f"api-{kind}-{transport}"
    url = grpc_server.url if transport == "http" else f"grpc://127.0.0.1:{grpc_server.grpc_port}"
    with Client(grpc_server.url) as rq:
        rq.create_queue(queue, max_deliveries=3, retry_base=0.1)
        ok, retry, reject, slow = (rq.enqueue(queue, {"kind": k}).id for k in ("ok", "retry", "reject", "slow"))
        worker = Worker(
            url, queue=queue, concurrency=4, poll_wait=1, metrics_port=free_port(), metrics_host="127.0.0.1"
        )
        runs: list[tuple[str, int]] = []

        def body(msg):
            runs.append((msg.payload["kind"], msg.deliveries))
            kind_ = msg.payload["kind"]
            if kind_ == "retry" and msg.deliveries == 1:
                raise Retry(delay=0.3)
            if kind_ == "reject":
                raise Reject("cannot parse")
            return {"echo": kind_}

        if kind == "sync":

            @worker.handler(timeout=0.5)
            def handle(msg):
                if msg.payload["kind"] == "slow" and msg.deliveries == 1:
                    time.sleep(2)
                return body(msg)
        else:

            @worker.handler(timeout=0.5)
            async def handle(msg):
                if msg.payload["kind"] == "slow" and msg.deliveries == 1:
                    await asyncio.sleep(2)
                return body(msg)

        thread = run_in_thread(worker)
        try:
            assert httpx.get(f"http://127.0.0.1:{worker.endpoint_port}/readyz").status_code == 200
            assert httpx.get(f"http://127.0.0.1:{worker.endpoint_port}/healthz").status_code == 200
            wait_for(
                lambda: (
                    rq.get_message(queue, reject).state == "dead"
                    and all(rq.get_message(queue, i).state == "acked" for i in (ok, retry, slow))
                ),
                30,
                "outcomes",
            )
            assert rq.get_message(queue, ok).result == {"echo": "ok"}
            assert rq.get_message(queue, retry).deliveries == 2
            dead = rq.get_message(queue, reject)
            assert dead.deliveries == 1 and dead.last_error == "cannot parse"
            assert rq.get_message(queue, slow).deliveries == 2  # the first run timed out
            text = httpx.get(f"http://127.0.0.1:{worker.endpoint_port}/metrics").text
            assert 'rankq_worker_retried_total{queue="%s"} 1.0' % queue in text
            assert 'rankq_worker_rejected_total{queue="%s"} 1.0' % queue in text
            assert 'rankq_worker_failed_total{queue="%s"} 1.0' % queue in text
            assert 'rankq_worker_processed_total{queue="%s"} 3.0' % queue in text
        finally:
            worker.stop()
            thread.join(20)
        assert not thread.is_alive()
        assert not worker.ready


def test_unknown_queue_keeps_retrying_and_reports_not_ready(shared_server):
    worker = Worker(shared_server.url, queue="no-such-queue", visibility_timeout=5, poll_wait=1)
    worker.handler(lambda msg: None)
    thread = run_in_thread(worker)
    worker.stop()
    thread.join(20)
    assert not thread.is_alive()


def test_a_worker_needs_a_handler():
    with pytest.raises(RuntimeError, match="no handler"):
        Worker("http://127.0.0.1:1", queue="q").run()
    with pytest.raises(ValueError):
        Worker("http://127.0.0.1:1", queue="q", concurrency=0)


def test_stop_before_start_returns_at_once(shared_server):
    worker = Worker(shared_server.url, queue="never", visibility_timeout=5, poll_wait=1)
    worker.handler(lambda msg: None)
    worker.stop()
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive()
